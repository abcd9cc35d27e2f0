"""Fault benchmark: one short real RL run (2 rollout workers, 2 reward workers, the HTTP judge against a local
fault-injecting server, a private redis-server) that injects one fault per step, then a table: the fault, the
step it hit, the rollouts that step logged against B x G, rollouts lost and duplicated, and what the run counted.
Target: every step completes, 0 lost, 0 duplicated, every fault counted.

Faults are injected after a step ends (the trainer's hooks), so they hit the next step's generation, scoring or
update. The run is synchronous (trainer.max_staleness=0), so each step's rollouts are its own.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

from benchmarks import verbose
from benchmarks.train import _setup, sft_dir
from toy.faults import kill_actor, kill_worker_mid_generation

B, G, STEPS = 4, 3, 9


def nan_gradient_once(learner) -> None:
    """Run on a learner rank: the next backward's lm_head gradient becomes NaN (once)."""

    def hook(g):
        handle.remove()
        return g * float("nan")

    handle = learner.engine.module.lm_head.weight.register_hook(hook)


def _counted(row: dict, events: list[str]) -> dict[str, float]:
    """Every counter a fault can move, for the table (zeros left out)."""
    keys = {
        "worker lost": sum(" lost (" in e and "hung" not in e for e in events),
        "worker hung": sum("lost (hung)" in e for e in events),
        "worker rejoined": sum("rejoined" in e for e in events),
        "reward worker (re)starts": row.get("reward_worker_starts", 0),
        "cache down": row.get("cache/unavailable", 0) + row.get("cache/skipped_unavailable", 0),
        "judge failed": row.get("judge/failed", 0) + row.get("judge/timeout", 0),
        "judge unparseable": row.get("judge/unparseable", 0),
        "perception zeroed": int(bool(row.get("zeroed_perception"))),
        "skipped optimizer steps": row.get("skipped_steps", 0),
    }
    return {k: v for k, v in keys.items() if v}


def run_bench_faults(root: str | Path = "runs/bench", sft_steps: int = 150, chunk_timeout_s: float = 30.0) -> int:
    import ray

    from cluster.config import Config
    from cluster.config_loader import load_config
    from cluster.run_dir import RunDir
    from cluster.services import RedisServer
    from cluster.stack import Stack
    from commands.stages import run_sft, run_train
    from toy.judge_server import JudgeServer

    root = Path(root)
    data, model = _setup(root)
    judge = JudgeServer()
    out = root / "faults"
    shutil.rmtree(out, ignore_errors=True)
    base = [
        f"data.dir={data}",
        f"trainer.prompts_per_step={B}",
        f"rollout.group_size={G}",
        "rollout.max_tokens=48",
        f"trainer.steps={STEPS}",
        "trainer.max_staleness=0",
        "trainer.checkpoint_every=0",
        f"sft.steps={sft_steps}",
        "sft.checkpoint_every=0",
        "rollout.num_workers=2",
        "rollout.num_cpus=1",
        "rollout.chunks_per_worker=1",
        f"rollout.chunk_timeout_s={chunk_timeout_s}",
        "reward.num_workers=2",
        "judge.backend=http",
        "judge.model=test",
        f"judge.base_url={judge.base_url}",
        "judge.retries=0",
        "judge.timeout_s=2",
        "learner.micro_batch_size=12",
        "cache.start_local=true",
        "cache.retry_after_s=0.5",
    ]
    plan = {  # injected after step s-1 ends, so that it hits step s
        2: "rollout worker SIGKILLed mid-generation",
        3: "reward worker SIGKILLed",
        4: "redis-server killed",
        5: "judge answers HTTP 500",
        6: "judge answers garbage (redis back)",
        7: "rollout worker hung (alive, not answering)",
        8: "non-finite gradient",
        9: "none (recovery)",
    }
    events_at: dict[int, list[str]] = {}
    seen = {"events": 0}

    def inject(trainer, step):
        events = trainer.rollout.events
        events_at[step] = events[seen["events"] :]
        seen["events"] = len(events)
        nxt = step + 1
        if nxt == 2:
            kill_worker_mid_generation(trainer.rollout.slots["rollout-0"].actor)
        elif nxt == 3:
            trainer.rollout.wait_until_ready(timeout_s=300)
            kill_actor(trainer.pool.workers[0])
        elif nxt == 4:
            trainer.stack.redis.stop()
        elif nxt == 5:
            judge.mode = "error"
        elif nxt == 6:
            judge.mode = "garbage"
            old = trainer.stack.redis
            trainer.stack.redis = RedisServer(port=old.port, password=old.password)
        elif nxt == 7:
            judge.mode = "yes"
            trainer.rollout.slots["rollout-1"].actor.__ray_call__.remote(lambda self: time.sleep(600))
        elif nxt == 8:
            trainer.rollout.wait_until_ready(timeout_s=300)
            ray.get(trainer.learner.ranks[0].run.remote(nan_gradient_once))

    sft_out = sft_dir(root, sft_steps)
    sft_cfg = load_config(Config, "configs/demo.yaml", base + [f"model.path={model}", f"run.out_dir={sft_out}"])
    try:
        with Stack(sft_cfg, verbose()) as stack:
            hf = sft_out / "hf"
            if not (hf / "config.json").is_file():
                run_sft(sft_cfg, stack=stack)
            cfg = load_config(Config, "configs/demo.yaml", base + [f"model.path={hf}", f"run.out_dir={out}"])
            cfg.cache.url, cfg.cache.url_env, cfg.cache.password_env = sft_cfg.cache.url, "", ""
            cfg.cache.start_local = False
            summary = run_train(cfg, stack=stack, hooks=[inject])
    finally:
        judge.close()
    run = RunDir(out)
    rows = {r["step"]: r for r in run.metrics()}
    rollouts = run.read_rollouts()
    print(
        f"\nFault benchmark: {STEPS} synchronous steps, B={B} prompts x G={G}, 2 rollout workers, 2 reward workers, "
        "HTTP judge (local fault server), private redis-server"
    )
    print(f"{'step':>4s}  {'fault':44s} {'rollouts':>9s} {'lost':>5s} {'dup':>4s}  counted")
    total_lost = total_dup = 0
    for step in range(1, STEPS + 1):
        row = rows.get(step)
        if row is None:
            print(f"{step:4d}  {plan.get(step, 'none'):44s} {'step did not complete':>9s}")
            continue
        counts = Counter(x["prompt_id"] for x in rollouts if x["step"] == step)
        want = row["prompt_ids"]
        lost = sum(max(0, G - counts.get(p, 0)) for p in want)
        dup = sum(max(0, n - G) for p, n in counts.items() if p in want) + sum(
            n for p, n in counts.items() if p not in want
        )
        total_lost, total_dup = total_lost + lost, total_dup + dup
        counted = _counted(row, events_at.get(step, []))
        text = ", ".join(f"{k} {v:g}" for k, v in counted.items()) or "-"
        print(
            f"{step:4d}  {plan.get(step, 'none (baseline)'):44s} {sum(counts.values()):4d}/{B * G:<4d} {lost:5d} "
            f"{dup:4d}  {text}"
        )
    print(
        f"\nsteps completed {len(rows)}/{STEPS}; rollouts lost {total_lost}, duplicated {total_dup}; "
        f"rollout events: {len(summary.get('rollout_events', []))}"
    )
    return 0 if len(rows) == STEPS and total_lost == total_dup == 0 else 1
