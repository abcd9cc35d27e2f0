"""Benchmark of the learner, printed as a table: one PA-GRPO step vs one GRPO step on the same rollout batch
(alternating, same learner; target ratio <= 1.05), and log-prob throughput of the policy on that batch."""

from __future__ import annotations

import statistics
import time
from pathlib import Path


def run_bench_learner(root: str | Path = "runs/bench", groups: int = 4, group_size: int = 4, rounds: int = 5,
                      model: str | None = None, zero_stage: int = 2) -> int:
    from cluster.config import Config
    from cluster.config_loader import load_config
    from learner.engine import Learner, Rollout
    from toy.tiny_model import build_tiny_model
    from videoqa.loader import MediaLoader
    from videoqa.prompts import sft_target
    from videoqa.schema import load_samples
    from toy.synthetic import make_synthetic

    root = Path(root)
    data = root / "data"
    if not (data / "cot.json").is_file():
        make_synthetic(data, n=80, seed=0, progress=False)
    model = model or str(root / "tiny-model")
    if not (Path(model) / "config.json").is_file():
        build_tiny_model(model)
    cfg = load_config(Config, "configs/demo.yaml", [f"learner.zero_stage={zero_stage}", "learner.lr=1e-5",
                                                    f"learner.micro_batch_size={group_size}"])
    learner = Learner(cfg, model)
    items = list(MediaLoader(data, cfg.video.sampling())(load_samples(data / "cot.json")[:groups]))
    tok = learner.processor.tokenizer
    rollouts = []
    for g, it in enumerate(items):
        full = tok.encode(sft_target(it.sample), add_special_tokens=False)
        for j in range(group_size):
            ids = full if j % 2 == 0 else full[: max(4, len(full) - 7 * j)]
            rollouts.append(Rollout(it, ids, r_perception=float(j % 3), r_reasoning=float((j + g) % 2)))
    n_tokens = sum(len(r.response_ids) for r in rollouts)

    times = {"pa_grpo": [], "grpo": []}
    for algo in ("pa_grpo", "grpo"):  # warm-up
        learner.cfg.algorithm = algo
        learner.rl_step(rollouts, group_size)
    for _ in range(rounds):
        for algo in ("pa_grpo", "grpo"):
            learner.cfg.algorithm = algo
            t0 = time.perf_counter()
            learner.rl_step(rollouts, group_size)
            times[algo].append(time.perf_counter() - t0)
    responses = [r.response_ids for r in rollouts]
    ritems = [r.item for r in rollouts]
    lp_times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        learner.logprobs(ritems, responses)
        lp_times.append(time.perf_counter() - t0)
    pa, gr = statistics.median(times["pa_grpo"]), statistics.median(times["grpo"])
    print(f"learner benchmark: {len(rollouts)} rollouts ({groups} groups x G={group_size}), {n_tokens} generated tokens, "
          f"ZeRO-{zero_stage}, {cfg.learner.dtype}, median of {rounds}")
    print(f"{'PA-GRPO step':32s} {pa * 1e3:9.0f} ms")
    print(f"{'GRPO step':32s} {gr * 1e3:9.0f} ms")
    print(f"{'PA-GRPO / GRPO':32s} {pa / gr:9.2f}   (target <= 1.05)")
    lp = statistics.median(lp_times)
    print(f"{'log-prob throughput':32s} {n_tokens / lp:9,.0f} generated tok/s ({lp * 1e3:.0f} ms per batch)")
    return 0
