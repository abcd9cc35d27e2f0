"""Experiment trackers (cluster/trackers.py, cluster/tracker_rows.py) against the real libraries: TensorBoard's
event files read back with its own reader, a W&B offline run read back with wandb's own record reader, MLflow
through a real tracking server (SQLite backend) read back with MlflowClient. The end-to-end kill-and-resume case is
in tests/test_training.py (test_sigkill_then_resume_repeats_the_uninterrupted_run)."""

import json
import logging
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from cluster.tracker_rows import ema, flat_params, samples, scalars, tracker_key
from tests.conftest import ROOT
from tests.tracker_readers import mlflow_steps, tensorboard_scalars, tensorboard_texts, wandb_steps

ROW = {
    "step": 3,
    "time": 1.7e9,
    "reward_perception": 0.5,
    "accuracy": 0.25,
    "loss": -0.1,
    "kl": 0.01,
    "overlapped": True,
    "prompt_ids": ["a", "b"],
    "skipped_media": {"decode": 2},
    "time/update": 1.5,
    "accuracy/multiple choice (A-D)": 0.5,
    "judge/ok": 4,
    "total/generated_tokens": 100,
}


def test_scalars_have_stable_namespaced_keys():
    """Catches: a renamed key (dashboards built on the names break), a list or the step sent as a scalar, a key
    MLflow refuses (its characters), a boolean dropped."""
    got = scalars(ROW)
    assert got == {
        "reward/perception/total": 0.5,
        "reward/reasoning/accuracy": 0.25,
        "learner/loss": -0.1,
        "learner/kl": 0.01,
        "rollout/overlapped": 1.0,
        "data/skipped_media/decode": 2.0,
        "time/update": 1.5,
        "accuracy/multiple choice _A-D_": 0.5,
        "judge/ok": 4.0,
        "total/generated_tokens": 100.0,
    }
    assert tracker_key("judge_yes_rate") == "judge/yes_rate" and tracker_key("entropy") == "learner/entropy"


def test_samples_one_per_prompt_parsed():
    """Catches: every sample of one group shown instead of one per prompt, the response not split into its parts,
    more than n rows, an unparsable response shown as empty."""
    good = "<observation>a red ball</observation><think>it rolls</think><answer>B</answer>"
    rows = [
        dict(
            step=2,
            prompt_id=p,
            problem_type="t",
            response=good if p != "c" else "rambling",
            r_perception=1.0,
            r_reasoning=0.5,
            acc_p=1.0,
            form_p=1.0,
            len_p=0.0,
            acc_r=1.0,
            form_r=1.0,
            len_r=0.0,
            verdict=True,
            sample_index=k,
        )
        for p in ("a", "b", "c")
        for k in range(3)
    ]
    got = samples(rows, {"a": "What rolls?"}, n=5)
    assert [r["prompt_id"] for r in got] == ["a", "b", "c"]
    assert (got[0]["question"], got[0]["observation"], got[0]["think"], got[0]["answer"]) == (
        "What rolls?",
        "a red ball",
        "it rolls",
        "B",
    )
    assert got[2]["think"] == "rambling" and got[2]["answer"] == ""
    assert len(samples(rows, {}, n=2)) == 2


def test_ema_is_debiased_and_skips_gaps():
    """Catches: an EMA pulled toward 0 at the start (not debiased), weight 0 not the identity, a NaN poisoning
    every later point."""
    assert ema([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])
    assert ema([1.0, 3.0], 0.0) == [1.0, 3.0]
    out = ema([1.0, float("nan"), 1.0], 0.5)
    assert math.isnan(out[1]) and out[2] == pytest.approx(1.0)
    assert ema([0.0, 1.0], 0.5)[1] == pytest.approx(0.5 / 0.75)
    with pytest.raises(ValueError):
        ema([1.0], 1.0)


def test_flat_params():
    assert flat_params({"a": {"b": 1, "c": [1, 2]}, "d": "x", "e": {}}) == {
        "a.b": "1",
        "a.c": "[1, 2]",
        "d": "x",
        "e": "{}",
    }


# -- the real trackers -------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server (SQLite backend, artifacts served) on a free local port."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, (root / "server.log").read_text()[-2000:]
            time.sleep(0.5)
    yield url
    os.killpg(proc.pid, 9)
    proc.wait()


def _cfg(tmp_path, *extra):
    from cluster.config import Config
    from cluster.config_loader import load_config

    return load_config(Config, None, [f"run.out_dir={tmp_path}", *extra])


def _row(step: int, value: float) -> dict:
    return {"step": step, "reward_perception": value, "loss": -value, "prompt_ids": ["x"]}


SAMPLE = [
    {
        "step": 2,
        "prompt_id": "p",
        "question": "q?",
        "observation": "o",
        "think": "t",
        "answer": "A",
        "r_perception": 1.0,
        "r_reasoning": 0.0,
    }
]


def _stage(run, run_id, cfg, steps, value, resumed_step=0, missed=()):
    """One driver's life: trackers opened (resuming at ``resumed_step``), steps logged (``missed`` ones written to
    metrics.jsonl only, as when a run is killed before its tracker thread sent them)."""
    from cluster.trackers import Trackers

    t = Trackers(cfg.trainer.loggers, cfg, run, run_id, "train", resumed_step=resumed_step)
    for s in steps:
        row = _row(s, value + s)
        run.log_metrics(row)
        if s not in missed:
            t.log(row, SAMPLE if s % 2 == 0 else None)
    t.shutdown()
    return t


def test_trackers_get_each_step_once_across_resumes(tmp_path, mlflow_server, monkeypatch):
    """Life 1 logs steps 1-5 (5 reaches metrics.jsonl but is never sent: killed) and resumes from its step-3
    checkpoint; life 2 logs 4-6 (6 never sent) and resumes from its step-6 checkpoint; life 3 logs 7. Each tracker
    holds steps 1-7 once, in one tracker run: step 6 sent from metrics.jsonl by life 3, TensorBoard holding life 2's
    values for 4-5 (its reader drops life 1's). Samples and the redacted config are there. Catches: a resume that
    starts a second tracker run, re-sends steps (duplicates), never sends a step the kill lost, or leaks a secret
    into the parameters."""
    from cluster.run_dir import RunDir

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_SERVICE", raising=False)  # wandb sets it in this process: gone again after the test
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    cfg = _cfg(
        tmp_path / "run", "trainer.loggers=[jsonl,tensorboard,wandb,mlflow]", "cache.url=redis://:hunter2@cache:6379/0"
    )
    run = RunDir(cfg.run.out_dir)
    run.path.mkdir(parents=True)
    first = _stage(run, "r-1", cfg, [1, 2, 3, 4, 5], 0.0, missed=(5,))
    assert first.failed == []
    record = json.loads((run.path / "trackers.json").read_text())
    assert {record[k]["last_step"] for k in ("tensorboard", "wandb", "mlflow")} == {4}
    run.truncate_metrics(3)
    assert _stage(run, "r-1", cfg, [4, 5, 6], 10.0, resumed_step=3, missed=(6,)).failed == []
    assert _stage(run, "r-1", cfg, [7], 20.0, resumed_step=6).failed == []
    key = "reward/perception/total"
    tb = tensorboard_scalars(run.path / "tensorboard", key)
    assert [s for s, _ in tb] == list(range(1, 8)), tb
    assert [v for _, v in tb] == pytest.approx([1, 2, 3, 14, 15, 16, 27])
    assert any("q?" in t for t in tensorboard_texts(run.path / "tensorboard", "samples"))
    assert sorted(wandb_steps(run.path / "wandb", key)) == list(range(1, 8))
    runs, steps, params = mlflow_steps(mlflow_server, "r-1", key)
    assert runs == 1 and sorted(steps) == list(range(1, 8))
    assert "hunter2" not in json.dumps(params) and params["trainer.loggers"]


def test_a_tracker_that_fails_is_one_warning(tmp_path, monkeypatch, caplog):
    """MLflow at a closed port, W&B online without a key: each is one warning naming it, the steps go on and end
    within a bound, metrics.jsonl has every row. Catches: a tracker error that ends the run, a hang on an
    unreachable server, W&B stopping to ask for a key."""
    from cluster.run_dir import RunDir

    for k in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with a W&B login
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")
    cfg = _cfg(tmp_path / "run", "trainer.loggers=[wandb,mlflow]")
    run = RunDir(cfg.run.out_dir)
    run.path.mkdir(parents=True)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="videop2r"):
        t = _stage(run, "r-2", cfg, [1, 2, 3], 0.0)
    assert time.monotonic() - t0 < 60
    assert sorted(t.failed) == ["mlflow", "wandb"]
    warned = [r.getMessage() for r in caplog.records if "experiment tracker" in r.getMessage()]
    assert len(warned) == 2 and any("WANDB_API_KEY" in w for w in warned), warned
    assert [r["step"] for r in run.metrics()] == [1, 2, 3]


def test_a_missing_tracker_package_is_refused_before_start(monkeypatch):
    """Catches: a logger whose library is not installed discovered mid-run (or silently never logging)."""
    import cluster.preflight as preflight
    from cluster.config_loader import ConfigError

    monkeypatch.setitem(preflight.TRACKER_PACKAGES, "wandb", "wandb_is_not_installed_here")
    preflight.check_tracker_packages(["jsonl", "tensorboard"])
    with pytest.raises(ConfigError, match=r"trainer.loggers names wandb.*pip install -e '.\[trackers\]'"):
        preflight.check_tracker_packages(["tensorboard", "wandb"])


def test_force_starts_the_trackers_over(tmp_path):
    """--force on a run folder: its tracker record and local tracker files go with its metrics, so the new run is
    a new tracker run. Catches: a forced restart resuming the old W&B/MLflow run or skipping its steps as sent."""
    from cluster.run_dir import RunDir

    cfg = _cfg(tmp_path / "run")
    run = RunDir(cfg.run.out_dir)
    run.prepare(cfg, resume=False, force=False)
    run.log_metrics(_row(1, 0.0))
    for d in ("tensorboard", "wandb", "mlflow-artifacts"):
        (run.path / d).mkdir()
    for f in ("trackers.json", "mlflow.db"):
        (run.path / f).write_text("{}")
    run.prepare(cfg, resume=False, force=True)
    assert not [
        p.name
        for p in run.path.iterdir()
        if p.name in ("tensorboard", "wandb", "trackers.json", "mlflow.db", "mlflow-artifacts")
    ]


CHILD = """
import sys, time
from cluster.config import Config
from cluster.config_loader import load_config
from cluster.run_dir import RunDir
from cluster.trackers import Trackers
out, life = sys.argv[1], int(sys.argv[2])
cfg = load_config(Config, None, [f"run.out_dir={out}", "trainer.loggers=[wandb]"])
run = RunDir(out)
run.path.mkdir(exist_ok=True)
t = Trackers(cfg.trainer.loggers, cfg, run, "r-3", "train", resumed_step=2 * (life - 1))
for s in (1, 2, 3) if life == 1 else (3, 4):
    row = {"step": s, "reward_perception": float(s)}
    run.log_metrics(row)
    t.log(row)
if life == 1:
    time.sleep(600)  # SIGKILLed here
t.shutdown()
print("failed", t.failed)
"""


PARENT = """
import json, os, signal, subprocess, sys, time
import wandb
out, child = sys.argv[1], sys.argv[2]
parent = wandb.init(project="videop2r-test", dir=out + "-parent", settings=wandb.Settings(silent=True, console="off"))
assert os.environ.get("WANDB_SERVICE"), "wandb no longer exports its service"  # what children inherit
first = subprocess.Popen([sys.executable, "-c", child, out, "1"], start_new_session=True)
deadline = time.monotonic() + 120
record = os.path.join(out, "trackers.json")
while not os.path.isfile(record) or json.load(open(record)).get("wandb", {}).get("last_step") != 3:
    assert first.poll() is None and time.monotonic() < deadline, "life 1 did not log its steps"
    time.sleep(0.2)
os.killpg(first.pid, signal.SIGKILL)
first.wait()
again = subprocess.run([sys.executable, "-c", child, out, "2"], capture_output=True, text=True, timeout=120)
print(again.stdout, again.stderr[-2000:])
parent.finish()
"""


def test_a_killed_driver_under_a_w_and_b_service_resumes_its_run(tmp_path):
    """A driver started by a process that runs W&B itself (a notebook, a sweep agent: wandb exports WANDB_SERVICE
    and children inherit it) is SIGKILLed; the same run resumed from that process still logs to W&B. Catches: the
    driver attaching to the inherited W&B service, which keeps the killed driver's run id registered, so the
    resumed run's init is refused ("run ID ... is in use") and W&B is dropped."""
    (tmp_path / "run-parent").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    env.pop("WANDB_SERVICE", None)
    r = subprocess.run(
        [sys.executable, "-c", PARENT, str(tmp_path / "run"), CHILD],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0 and "failed []" in r.stdout and "in use" not in r.stdout, r.stdout + r.stderr[-2000:]
