"""The driver's pure parts: data order and its resume state, the run folder, a step's batch bookkeeping, the
importance weights and mismatch KL, and the config's cross-field checks."""

import json
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from actors.rollout_worker import Response, RolloutResult
from cluster.run_dir import RunDir, RunExistsError
from cluster.step_batch import StepBatch
from learner.loss import importance_weights as _importance
from learner.loss import policy_loss
from rewards import ProcessRewards
from tests.conftest import ROOT
from videoqa.sampler import IndexOrder


def test_index_order_visits_every_row_once_per_epoch_across_batches():
    order = IndexOrder(10, seed=3)
    seen = [order.take(4) for _ in range(5)]  # 20 rows: two epochs, batches straddle the boundary
    flat = [i for b in seen for i in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] != flat[10:]  # each epoch its own permutation
    assert order.state() == {"epoch": 1, "position": 10}


@pytest.mark.parametrize("cut", [3, 5])  # 5 batches of 2 = exactly one epoch: resume at the epoch boundary
def test_index_order_resumes_from_its_state(cut):
    a = IndexOrder(10, seed=1)
    for _ in range(cut):
        a.take(2)
    state = a.state()
    expect = [a.take(2) for _ in range(8)]
    b = IndexOrder(10, seed=1, **state)
    assert [b.take(2) for _ in range(8)] == expect
    with pytest.raises(ValueError, match="empty"):
        IndexOrder(0)


def test_run_dir_refuses_to_overwrite_and_commits_checkpoints_atomically(tmp_path):
    cfg = SimpleNamespace(run=SimpleNamespace(name="t"), model_dump=lambda mode: {"run": {"name": "t"}})
    run = RunDir(tmp_path / "r")
    run_id = run.prepare(cfg, resume=False, force=False)
    run.write_control(run_id, "redis://x")
    run.log_metrics({"step": 1, "loss": 0.5})
    run.log_metrics({"step": 2, "loss": 0.4})
    with pytest.raises(RunExistsError, match="already holds a run"):
        RunDir(tmp_path / "r").prepare(cfg, resume=False, force=False)
    assert run.prepare(cfg, resume=True, force=False) == run_id  # a resume keeps the run id
    tmp, final = run.checkpoint_dir(2)
    tmp.mkdir()
    (tmp / "weights").write_text("w")
    assert run.latest_checkpoint() is None  # half-written: not a checkpoint
    run.commit_checkpoint(tmp, final, {"step": 2}, keep=1)
    assert run.latest_checkpoint() == final and json.loads((final / "driver.json").read_text()) == {"step": 2}
    tmp, final3 = run.checkpoint_dir(3)
    tmp.mkdir()
    run.commit_checkpoint(tmp, final3, {"step": 3}, keep=1)
    assert run.list_checkpoints() == [final3]  # the older one is pruned
    run.truncate_metrics(1)
    assert [r["step"] for r in run.metrics()] == [1]
    run.prepare(cfg, resume=False, force=True)
    assert run.metrics() == [] and run.latest_checkpoint() is None


def _rewards(p, r, verdict=True):
    return ProcessRewards(
        acc_p=p, form_p=0, len_p=0, acc_r=r, form_r=0, len_r=0, verdict=verdict, perception_valid=True
    )


def _batch(versions, G=2):
    items = [
        SimpleNamespace(sample=SimpleNamespace(problem_id=f"p{i}", problem_type="OCR")) for i in range(len(versions))
    ]
    results = [
        RolloutResult(f"p{i}", [1], [Response([5, 6], "x", "stop", [-0.1, -0.2]) for _ in range(G)], v, "w0")
        for i, v in enumerate(versions)
    ]
    return StepBatch(3, list(range(len(versions))), items, results)


def test_step_batch_bookkeeping():
    b = _batch([2, 1])
    b.rewards = [_rewards(1, 0), _rewards(0, 0), _rewards(1, 1), _rewards(1, 1)]
    flat_p, flat_r = b.flat_groups()
    assert flat_p == [False, True] and flat_r == [True, True]
    rows = b.learner_rollouts(learner_version=2)
    assert [r["prompt_index"] for r in rows] == [0, 0, 1, 1]
    assert [r["stale"] for r in rows] == [False, False, True, True]  # version 1 < the learner's 2
    b.score_stats = Counter(judge_ok=6, judge_failed=3, judge_timeout=1, judge_not_needed=5)
    assert b.missing_verdict_fraction() == pytest.approx(0.4)
    other = _batch([2])
    other.rewards = [_rewards(0, 1), _rewards(1, 0)]
    b.replace_groups([1], other)
    assert b.versions() == [2, 2] and [r.acc_r for r in b.rewards] == [0, 0, 1, 0]
    log = b.log_rows({"advantage_perception": [0.5, -0.5, 1, -1]})
    assert [r["advantage_perception"] for r in log] == [0.5, -0.5, 1, -1] and log[2]["prompt_id"] == "p0"


@pytest.mark.parametrize("max_staleness, redone", [(1, [2]), (0, [1, 2]), (2, [])])
def test_refresh_stale_resamples_only_groups_beyond_max_staleness(max_staleness, redone):
    from cluster.trainer import RLTrainer

    trainer = RLTrainer.__new__(RLTrainer)  # only the refresh logic: sampling and scoring are recorded stand-ins
    trainer.cfg = SimpleNamespace(trainer=SimpleNamespace(max_staleness=max_staleness))
    trainer.learner = SimpleNamespace(version=5)
    calls = []

    def sample(step, rows, items, salt=""):
        calls.append((step, rows, [it.sample.problem_id for it in items], salt))
        fresh = _batch([5] * len(rows))
        fresh.rows, fresh.items = rows, items
        return fresh

    def score(batch):
        batch.rewards = [_rewards(9, 9)] * (len(batch.rows) * 2)

    trainer.sample, trainer.score = sample, score
    b = _batch([5, 4, 3])  # 0, 1 and 2 versions behind the learner
    b.rewards = [_rewards(0, 0)] * 6
    out = trainer.refresh_stale(b)
    assert calls == ([(3, redone, [f"p{i}" for i in redone], "stale")] if redone else [])
    assert out.versions() == [5 if i in redone else v for i, v in enumerate([5, 4, 3])]
    assert out.regenerated_groups == len(redone)
    assert [r.acc_p for r in out.rewards[::2]] == [9 if i in redone else 0 for i in range(3)]


def test_truncated_importance_weights_and_mismatch_kl():
    tokens = torch.ones(2, 3)
    old = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    behaviour = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -0.5, -1.0]])
    w, mismatch = _importance(old, behaviour, torch.tensor([False, True]), tokens, clamp=2.0)
    assert torch.equal(w[0], torch.ones(3))  # fresh rollouts are not reweighted
    assert torch.allclose(w[1], torch.tensor([2.0, torch.exp(torch.tensor(-0.5)), 1.0]))  # e^1 clamped to 2
    assert mismatch > 0.01
    w, same = _importance(old, old.clone(), torch.tensor([False, False]), tokens, clamp=2.0)
    assert w is None and same == 0.0
    _, tiny = _importance(old, old + 1e-6, torch.tensor([False, False]), tokens, clamp=2.0)
    assert 0 < tiny < 1e-10  # computed in float64: a 1e-6 weight-sync difference still shows


def test_importance_weight_scales_the_policy_gradient():
    logp = torch.zeros(1, 2, requires_grad=True)
    adv, mask = torch.tensor([[1.0, 1.0]]), torch.ones(1, 2)
    loss, _ = policy_loss(logp, torch.zeros(1, 2), None, adv, mask, beta=0.0)
    loss.backward()
    g1 = logp.grad.clone()
    logp.grad = None
    loss, _ = policy_loss(logp, torch.zeros(1, 2), None, adv, mask, beta=0.0, is_weight=torch.tensor([[2.0, 0.5]]))
    loss.backward()
    assert torch.allclose(logp.grad, g1 * torch.tensor([[2.0, 0.5]]))


def test_config_cross_checks():
    from cluster.config import Config
    from cluster.config_loader import ConfigError, load_config

    with pytest.raises(ConfigError, match="group_size must be >= 2"):
        load_config(Config, None, ["rollout.group_size=1"])
    with pytest.raises(ConfigError, match="multiple of learner.num_ranks=2"):
        load_config(Config, None, ["learner.num_ranks=2", "trainer.prompts_per_step=3"])
    with pytest.raises(ConfigError, match="nccl needs learner.num_gpus"):
        load_config(Config, None, ["learner.backend=nccl"])


def test_local_redis_goes_with_a_killed_driver(tmp_path):
    """A driver SIGKILLed mid-run (no cleanup runs) does not leave its private redis-server behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    code = (
        "from cluster.services import RedisServer; import sys, time; s = RedisServer(); "
        "print(s.proc.pid, flush=True); time.sleep(600)"
    )
    driver = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    redis_pid = int(driver.stdout.readline())
    assert psutil.pid_exists(redis_pid)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    deadline = time.monotonic() + 30
    while psutil.pid_exists(redis_pid) and psutil.Process(redis_pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "redis-server outlived its driver"
        time.sleep(0.2)


def test_control_plane_refuses_worker_counts_out_of_range(redis_server, tmp_path):
    """The desired rollout worker count comes from a Redis that others can write: a count of 0, one above
    rollout.max_workers or one that is not a number is refused (None: the run keeps its workers) and counted, never
    applied (0 crashed the next step; 1000 asked the autoscaler for a fleet). Within range it is applied as before.
    `videop2r scale` refuses a count above the run's reported bound with one line before writing anything."""
    import subprocess
    import sys
    from pathlib import Path

    from cluster.config import Config
    from cluster.config_loader import ConfigError, load_config
    from cluster.control import ControlPlane

    plane = ControlPlane(redis_server.url, "bounds-test")
    key = plane._key("desired_rollout_workers")
    assert plane.desired_workers(8) is None and plane.rejected == 0  # none set
    for bad in (b"0", b"-3", b"1000", b"many"):
        redis_server.client.set(key, bad)
        assert plane.desired_workers(8) is None
    assert plane.rejected == 4
    redis_server.client.set(key, b"8")
    assert plane.desired_workers(8) == 8 and plane.rejected == 4
    with pytest.raises(ConfigError, match="rollout.max_workers=1 is below rollout.num_workers=2"):
        load_config(Config, None, ["rollout.num_workers=2", "rollout.max_workers=1"])

    run = tmp_path / "run"  # a run folder with only its control file, as the driver writes it
    run.mkdir()
    RunDir(run).write_control("bounds-test", redis_server.url)
    plane.report({"step": 1, "rollout_workers": 2, "max_rollout_workers": 8})
    redis_server.client.set(key, b"2")
    r = subprocess.run(
        [str(Path(sys.executable).parent / "videop2r"), "scale", "--run", str(run), "--rollout-workers", "9"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: --rollout-workers 9 is above the run's rollout.max_workers=8: the run would refuse it (restart "
        "it with a larger rollout.max_workers)"
    ], r.stderr
    assert redis_server.client.get(key) == b"2"  # nothing written


def test_run_folder_is_never_written_through_a_link(tmp_path):
    """Whoever can write a shared run folder could plant links where the run writes (config.yaml, hf/, ...): a
    start refuses them with one line before writing or removing anything, so --force does not empty the link's
    target and no file lands where the link points. `make clean` removes a `runs` link, never its target. Catches
    writes that follow the link (the victim file changes) and a check made after the first write."""
    import subprocess

    from cluster.config import Config
    from cluster.config_loader import load_config

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("mine")
    cfg = load_config(Config, None, [])
    for entry, force in (("config.yaml", False), ("hf", True), ("metrics.jsonl", True)):
        run = tmp_path / f"run-{entry}"
        run.mkdir()
        (run / "metrics.jsonl").write_text("{}\n") if entry != "metrics.jsonl" else None  # an earlier run
        (run / entry).symlink_to(victim / "precious" if entry != "hf" else victim)
        with pytest.raises(RunExistsError, match=f"{entry} is a symbolic link .*never through a link"):
            RunDir(run).prepare(cfg, resume=not force, force=force)
        assert (victim / "precious").read_text() == "mine" and sorted(p.name for p in victim.iterdir()) == ["precious"]
        assert not (run / "rollouts").exists()  # refused before anything was made

    work = tmp_path / "work"
    work.mkdir()
    (work / "runs").symlink_to(victim)
    r = subprocess.run(
        ["make", "-f", str(ROOT / "Makefile"), "clean"], cwd=work, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and "removing the link only" in r.stdout, r.stdout + r.stderr
    assert not (work / "runs").exists() and (victim / "precious").read_text() == "mine"


def test_a_resume_refuses_a_checkpoint_other_users_can_write(tmp_path):
    """A resume unpickles DeepSpeed's checkpoint files, so a checkpoint (or a folder on the way to it) that another
    user could have written is refused with one line, before anything loads; the same folder made private again
    resumes. Catches the check skipping the files inside the checkpoint, or the run folder itself."""
    import os

    run = RunDir(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    tmp, final = run.checkpoint_dir(2)
    (tmp / "step2").mkdir(parents=True)
    (tmp / "step2" / "mp_rank_00_model_states.pt").write_bytes(b"not really")
    run.commit_checkpoint(tmp, final, {"step": 2}, keep=2)
    for p in (run.path, *run.path.rglob("*")):
        p.chmod(0o700 if p.is_dir() else 0o600)
    latest = run.latest_checkpoint()
    run.check_private(latest)
    for planted in (latest / "step2" / "mp_rank_00_model_states.pt", run.path):
        mode = planted.stat().st_mode
        planted.chmod(mode | 0o020)  # group-writable
        with pytest.raises(RunExistsError, match=f"{planted} is writable by other users .*chmod -R go-w"):
            run.check_private(latest)
        planted.chmod(mode)
    if os.geteuid() == 0:  # CI runs as root: a file of another user
        os.chown(latest / "driver.json", 1234, -1)
        with pytest.raises(RunExistsError, match="owned by uid 1234"):
            run.check_private(latest)
