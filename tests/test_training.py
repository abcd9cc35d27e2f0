"""The training system end to end on the real stack (Ray actors, vLLM rollout workers, the reward pool, Redis, the
DeepSpeed learner as Ray actors, the weight broadcast): SFT, then short RL runs in both modes, resume after a
SIGKILL, GRPO from the same start on two learner ranks, and a run that survives scaling and faults."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.run_dir import RunDir
from tests.conftest import B, G, ROOT, config, overrides  # noqa: F401 - the shared run settings
from toy.faults import kill_actor, kill_worker_mid_generation
from videoqa.sampler import IndexOrder

pytestmark = pytest.mark.vllm
VIDEOP2R = str(Path(sys.executable).parent / "videop2r")


@pytest.fixture(scope="module")
def reference_run(ray_cluster, sft_model, demo_data, tmp_path_factory):
    """An uninterrupted synchronous PA-GRPO run of 4 steps (checkpoints at 2 and 4)."""
    from commands.stages import run_train

    out = tmp_path_factory.mktemp("rl-sync")
    summary = run_train(config(out, sft_model, demo_data))
    return out, summary


def test_synchronous_run_writes_its_folder(reference_run, demo_data):
    out, summary = reference_run
    run = RunDir(out)
    rows = run.metrics()
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and summary["steps"] == 4
    assert [r["weight_version"] for r in rows] == [1, 2, 3, 4]
    assert all(r["staleness_max"] == 0 and not r["overlapped"] for r in rows)
    assert all(r["sync_updated"] == 1 and r["sync_failed"] == 0 for r in rows)  # the one worker got each version
    # the workers hold exactly the learner's weights: vLLM's and the learner's log-probs agree (float32)
    assert all(0 <= r["mismatch_kl"] < 1e-6 for r in rows), [r["mismatch_kl"] for r in rows]
    assert rows[0]["format_perception"] > 0.5  # SFT taught the format, so the judge had observations to judge
    order = IndexOrder(40, seed=0)
    rollouts = run.read_rollouts()
    for r in rows:  # the data order is the seeded one, and each prompt has exactly G rollouts of that step
        ids = [x["prompt_id"] for x in rollouts if x["step"] == r["step"]]
        assert sorted(set(ids)) == sorted(r["prompt_ids"]) and len(ids) == B * G
        assert [f"train-{i:05d}" for i in order.take(B)] == r["prompt_ids"]
    first = [x for x in rollouts if x["step"] == 1]
    assert {x["weight_version"] for x in first} == {0} and {
        x["weight_version"] for x in rollouts if x["step"] == 4
    } == {3}
    for key in (
        "response",
        "r_perception",
        "r_reasoning",
        "acc_p",
        "form_r",
        "advantage_perception",
        "advantage_reasoning",
        "worker",
        "problem_type",
        "response_tokens",
    ):
        assert key in first[0]
    assert [p.name for p in run.list_checkpoints()] == ["step_000002", "step_000004"]
    assert (out / "hf" / "config.json").is_file() and json.loads((out / "summary.json").read_text())["steps"] == 4
    assert "api_key:" not in (out / "config.yaml").read_text()  # only the variable name (api_key_env) is written
    # every value the Prometheus exporter reads is in a real step's row (a renamed key would leave its gauge empty)
    from cluster.metrics import STEP_GAUGES, STEP_TOTALS

    wanted = {key for _, _, keys in STEP_GAUGES.values() for key in keys.values()} | {
        k for _, k in STEP_TOTALS.values()
    }
    assert wanted <= rows[-1].keys(), sorted(wanted - rows[-1].keys())
    assert all(r["grad_norm"] > 0 and r["entropy"] > 0 and r["time/logprobs"] > 0 for r in rows)


def test_sigkill_then_resume_repeats_the_uninterrupted_run(reference_run, sft_model, demo_data, tmp_path):
    """Killed (the whole job, SIGKILL) after step 3; the resume redoes step 3 from the step-2 checkpoint and its
    prompts and losses equal the uninterrupted run's. With TensorBoard, W&B (offline) and MLflow (its default
    SQLite file in the run folder) on: each holds steps 1-4 once, in one tracker run, with the samples of step 2."""
    from tests.tracker_readers import mlflow_steps, tensorboard_scalars, tensorboard_texts, wandb_steps

    ref_out, _ = reference_run
    out = tmp_path / "rl"
    args = [
        VIDEOP2R,
        "train",
        "--config",
        "configs/demo.yaml",
        *overrides(out, sft_model, demo_data),
        "trainer.loggers=[jsonl,tensorboard,wandb,mlflow]",
        "trainer.log_samples_every=2",
    ]
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, env=env
    )
    deadline = time.monotonic() + 300
    while not [r for r in RunDir(out).metrics() if r["step"] == 3]:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()[-3000:]
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # the job's own cluster died with it; its vLLM engines (child processes of its workers) are orphans now
    subprocess.run(["pkill", "-9", "-s", str(proc.pid)], check=False)
    assert RunDir(out).latest_checkpoint().name == "step_000002"
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert "experiment tracker" not in again.stderr, again.stderr[-3000:]  # none failed
    key = "reward/perception/total"
    assert [s for s, _ in tensorboard_scalars(out / "tensorboard", key)] == [1, 2, 3, 4]
    shown = tensorboard_texts(out / "tensorboard", "samples")  # steps 2 and 4 (log_samples_every=2), once each
    assert len(shown) == 2 and all(t.startswith("| step | prompt_id | problem_type | question |") for t in shown)
    assert sorted(wandb_steps(out / "wandb", key)) == [1, 2, 3, 4]
    runs, steps, _ = mlflow_steps(
        f"sqlite:///{out / 'mlflow.db'}", json.loads((out / "control.json").read_text())["run_id"], key
    )
    assert runs == 1 and sorted(steps) == [1, 2, 3, 4]
    assert len(list((out / "mlflow-artifacts").rglob("step_*.json"))) == 2  # the samples, in the run folder
    got, want = RunDir(out).metrics(), RunDir(ref_out).metrics()
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    for g, w in zip(got[2:], want[2:]):
        assert g["prompt_ids"] == w["prompt_ids"]
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-5, abs=1e-7)
        assert g["reward_reasoning"] == pytest.approx(w["reward_reasoning"])
    assert json.loads((out / "summary.json").read_text())["resumed_from"].endswith("step_000002")
    # resume again with two rollout workers, up to the end of the first epoch (40 rows / B=4: step 10) ...
    from commands.stages import run_train

    run_train(config(out, sft_model, demo_data, "trainer.steps=10", "rollout.num_workers=2"))
    assert RunDir(out).latest_checkpoint().name == "step_000010"
    # ... and from that epoch-boundary checkpoint into the next epoch
    run_train(config(out, sft_model, demo_data, "trainer.steps=12"))
    rows, order = RunDir(out).metrics(), IndexOrder(40, seed=0)
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert [r["prompt_ids"] for r in rows] == [[f"train-{i:05d}" for i in order.take(B)] for _ in rows]
    assert {r["rollout_workers"] for r in rows[4:10]} == {2} and {r["rollout_workers"] for r in rows[10:]} == {1}
    assert len({x["worker"] for x in RunDir(out).read_rollouts() if 5 <= x["step"] <= 10}) == 2


def test_grpo_on_two_learner_ranks_from_the_same_start(reference_run, sft_model, demo_data, tmp_path):
    """The baseline: same SFT start and seeds, so step 1 samples the same rollouts; two DeepSpeed ranks (gloo),
    ZeRO-3; dynamic sampling replaces exactly the groups flat in both processes by fresh prompts. Micro-batches by a
    token budget (learner.micro_batch_tokens): each rank's rows need their own number of them, and under ZeRO-3
    every rank must run as many forwards (each gathers weights with the other), or the step hangs."""
    from commands.stages import run_train

    ref_out, _ = reference_run
    out = tmp_path / "grpo"
    summary = run_train(
        config(
            out,
            sft_model,
            demo_data,
            "learner.algorithm=grpo",
            "learner.num_ranks=2",
            "trainer.steps=2",
            "learner.zero_stage=3",
            "trainer.drop_flat_groups=true",
            "learner.micro_batch_tokens=400",
        )
    )
    mine, ref = RunDir(out).read_rollouts(), RunDir(ref_out).read_rollouts()
    rows = RunDir(out).metrics()
    assert [r["step"] for r in rows] == [1, 2] and "flat_groups" in rows[0] and rows[1]["mismatch_kl"] < 1e-6
    assert all(0 <= r["padding_fraction"] < 1 for r in rows)

    def groups(xs):
        return {
            p: [(x["response"], x["r_perception"], x["r_reasoning"]) for x in xs if x["prompt_id"] == p]
            for p in dict.fromkeys(x["prompt_id"] for x in xs)
        }

    mine1, ref1 = groups([x for x in mine if x["step"] == 1]), groups([x for x in ref if x["step"] == 1])
    assert len(mine1) == B and all(len(g) == G for g in mine1.values())
    for p in set(ref1) & set(mine1):
        assert mine1[p] == ref1[p]  # same start, same seeds: the same group
    flat = {p for p, g in ref1.items() if len({x[1] for x in g}) == 1 and len({x[2] for x in g}) == 1}
    assert flat and set(ref1) - set(mine1) == flat  # exactly the groups without signal were replaced
    assert summary["counters"]["resampled_groups"] == rows[-1]["total/resampled_groups"] >= len(flat)
    # GRPO gives every token of a rollout one advantage
    assert all(x["advantage_perception"] == x["advantage_reasoning"] for x in mine)


def test_overlapped_run_survives_scaling_and_faults(ray_cluster, sft_model, demo_data, tmp_path):
    """max_staleness=1 with: `videop2r scale` 1 -> 2 -> 1 workers, a rollout worker SIGKILLed mid-generation, a
    reward worker killed, redis-server killed and brought back, the judge failing for a step, a non-finite loss."""
    import ray

    from commands.stages import run_train
    from toy.judge_server import JudgeServer

    judge = JudgeServer()
    out = tmp_path / "rl"
    cfg = config(
        out,
        sft_model,
        demo_data,
        "trainer.max_staleness=1",
        "trainer.steps=9",
        "judge.backend=http",
        f"judge.base_url={judge.base_url}",
        "judge.model=test",
        "judge.retries=0",
        "judge.timeout_s=2",
        "cache.enabled=true",
    )
    events = {}

    def scale(n):
        r = subprocess.run(
            [VIDEOP2R, "scale", "--run", str(out), "--rollout-workers", str(n)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr

    def hook(trainer, step):
        if step == 1:
            scale(2)
        if step == 2:
            trainer.rollout.wait_until_ready(timeout_s=240)  # the new worker joins (with the weights)
            assert trainer.rollout.ready_workers == 2
        if step == 3:  # SIGKILL a rollout worker while the next batch is being generated
            kill_worker_mid_generation(trainer.rollout.slots["rollout-0"].actor)  # from inside, wherever it runs
            events["rollout_killed"] = True
        if step == 4:
            kill_actor(trainer.pool.workers[0])
            trainer.stack.redis.stop()
        if step == 5:
            judge.mode = "error"
        if step == 6:
            from cluster.services import RedisServer

            judge.mode = "yes"
            old = trainer.stack.redis
            trainer.stack.redis = RedisServer(port=old.port, password=old.password)

            from benchmarks.faults import nan_gradient_once

            ray.get(trainer.learner.ranks[0].run.remote(nan_gradient_once))
        if step == 7:
            scale(1)

    try:
        summary = run_train(cfg, hooks=[hook])
    finally:
        judge.close()
    rows = {r["step"]: r for r in RunDir(out).metrics()}
    assert sorted(rows) == list(range(1, 10)) and summary["steps"] == 9
    # overlapped: each batch after the first was generated one version behind the update that trained on it
    assert all(rows[s]["staleness_max"] <= 1 for s in rows) and any(rows[s]["staleness_max"] == 1 for s in rows)
    assert all(rows[s]["overlapped"] for s in range(1, 9))
    # scaling: two workers served, then one again
    assert max(r["rollout_workers_ready"] for r in rows.values()) == 2 and rows[9]["rollout_workers"] == 1
    # nothing lost or duplicated: every step has B prompts x G rollouts, in the seeded order
    rollouts = RunDir(out).read_rollouts()
    order = IndexOrder(40, seed=0)
    for s, r in rows.items():
        ids = [x["prompt_id"] for x in rollouts if x["step"] == s]
        assert len(ids) == B * G and sorted(set(ids)) == sorted(r["prompt_ids"])
        assert r["prompt_ids"] == [f"train-{i:05d}" for i in order.take(B)]
    assert len({x["worker"] for x in rollouts}) >= 2
    assert any("lost" in e for e in summary["rollout_events"])
    # the killed reward worker shows as a restart: a worker scoring its first batch after step 1
    assert rows[1]["reward_worker_starts"] >= 1 and sum(rows[s]["reward_worker_starts"] for s in range(2, 10)) >= 1
    # redis down: scored uncached, counted; back: cached again (a step scored across the restart may do both)
    down = [s for s, r in rows.items() if r.get("cache/unavailable", 0) + r.get("cache/skipped_unavailable", 0) > 0]
    assert down and any(rows[s].get("cache/writes", 0) == 0 for s in down)
    assert rows[9].get("cache/writes", 0) + rows[9].get("cache/hits", 0) > 0
    # the judge failing: that step's perception advantages were zeroed (counted), not made-up "No"s
    failed = [s for s, r in rows.items() if r["zeroed_perception"]]
    assert failed and all(rows[s]["missing_verdict_frac"] > 0.2 for s in failed)
    assert summary["counters"]["zeroed_perception_steps"] == len(failed)
    zeroed = [x for x in rollouts if x["step"] in failed]
    assert all(x["advantage_perception"] == 0 for x in zeroed)
    # the non-finite loss: the step was skipped, counted
    assert summary["counters"]["nonfinite_steps"] >= 1
    # a checkpoint taken while the next batch was already generated resumes at that batch's prompts (not after)
    state = json.loads((out / "checkpoints" / "step_000008" / "driver.json").read_text())
    assert state["order"] == {"epoch": 0, "position": 8 * B}
