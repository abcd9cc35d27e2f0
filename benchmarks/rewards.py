"""Benchmark of the reward side, printed as a table:

1. rule-reward throughput of one worker (parse + accuracy + format + length + oracle judge), rollouts/s;
2. judge-cache hit latency against a real redis-server (one key per lookup, and a 64-key batch), p50 / p99;
3. reward-pool throughput with 1 vs 2 Ray workers on the same batch (ratio; 2 cores here).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from benchmarks import verbose


def _rollouts(data: Path, n: int):
    from actors.reward_scorer import ScoreItem
    from videoqa.prompts import sft_target
    from videoqa.schema import load_samples

    cot = load_samples(data / "cot.json")
    shapes = [
        sft_target,  # perfect
        lambda s: f"<observation>I see shapes.</observation><think>{s.process}</think><answer>{s.answer}</answer>",
        lambda s: s.answer,  # no tags
        lambda s: f"<observation>{s.observation}</observation><think>{s.process}</think><answer>0</answer>",
    ]
    return [ScoreItem.from_sample(cot[i % len(cot)], shapes[i % len(shapes)](cot[i % len(cot)])) for i in range(n)]


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def run_bench_rewards(data: str | Path, model: str | None, n: int = 2000, lookups: int = 2000) -> int:
    import ray

    from actors.reward_pool import RewardPool
    from actors.reward_scorer import RewardScorer
    from actors.verdict_cache import VerdictCache
    from cluster.config import Config
    from cluster.config_loader import load_config
    from cluster.services import RedisServer, init_ray

    data = Path(data)
    if not (data / "cot.json").is_file():
        from toy.synthetic import make_synthetic

        make_synthetic(data, n=50, seed=0, progress=False)
    if model and not (Path(model) / "config.json").is_file():
        from toy.tiny_model import build_tiny_model

        build_tiny_model(model)
    items = _rollouts(data, n)
    cfg = load_config(Config, None, ["cache.enabled=false", "reward.num_cpus=1"])
    rows = []

    scorer = RewardScorer(cfg.reward, cfg.judge, cfg.cache, model)
    scorer.score(items[:50])  # warm-up (lazy imports, ROUGE scorer)
    t0 = time.perf_counter()
    scorer.score(items)
    rows.append(("rule rewards, 1 worker (in process)", f"{n / (time.perf_counter() - t0):,.0f} rollouts/s"))

    redis = RedisServer()
    try:
        cache = VerdictCache(redis.url)
        keys = [f"bench-{i}" for i in range(64)]
        cache.put_many({k: {"verdict": True} for k in keys})
        single, batch = [], []
        for i in range(lookups):
            t = time.perf_counter()
            cache.get_many([keys[i % 64]])
            single.append((time.perf_counter() - t) * 1e3)
        for _ in range(lookups // 8):
            t = time.perf_counter()
            cache.get_many(keys)
            batch.append((time.perf_counter() - t) * 1e3)
        rows.append(("cache hit, 1 key (p50 / p99)", f"{statistics.median(single):.3f} / {_pct(single, 0.99):.3f} ms"))
        rows.append(("cache hit, 64 keys (p50 / p99)", f"{statistics.median(batch):.3f} / {_pct(batch, 0.99):.3f} ms"))
    finally:
        redis.stop()

    init_ray(verbose(), num_cpus=4)
    try:
        rates = {}
        for workers in (1, 2):
            pool = RewardPool(cfg, tokenizer_path=model, num_workers=workers)
            pool.score(items[:100])  # warm-up: actor start, imports
            t0 = time.perf_counter()
            pool.score(items)
            rates[workers] = n / (time.perf_counter() - t0)
            pool.shutdown()
            rows.append((f"reward pool, {workers} Ray worker(s)", f"{rates[workers]:,.0f} rollouts/s"))
        rows.append(("pool speed-up, 2 vs 1 workers", f"{rates[2] / rates[1]:.2f}x"))
    finally:
        ray.shutdown()

    print(f"reward benchmark: {n} rollouts (4 response shapes), oracle judge, tokenizer {'yes' if model else 'none'}")
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:{width}s}  {value}")
    return 0
