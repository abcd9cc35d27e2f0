"""The reward pool: N reward-worker Ray actors (N from config, independent of the rollout workers) and, for the
vllm judge backend, the judge-engine actors they share.

``RewardPool.score(items)`` splits a batch into contiguous, even chunks, scores them in parallel and returns the
rewards in input order with the summed counters. A worker that dies mid-batch is restarted by Ray; its chunk is
scored again on the next attempt (scoring is idempotent: the judge's verdicts are cached).
"""

from __future__ import annotations

from collections import Counter

from actors.reward_scorer import RewardScorer, ScoredBatch, ScoreItem
from actors.judges import JudgeEngine, judge_api_key


class RewardPool:
    def __init__(self, cfg, tokenizer_path: str | None = None, num_workers: int | None = None,
                 start_timeout_s: float = 300):
        """``cfg`` is the run ``Config``; ``tokenizer_path`` defaults to ``reward.tokenizer`` then ``model.path``."""
        import ray

        self.cfg = cfg
        self.engines, self.workers = [], []
        if cfg.judge.backend == "vllm":
            eng = cfg.judge.engine
            actor = ray.remote(JudgeEngine).options(
                num_cpus=eng.num_cpus, num_gpus=eng.num_gpus, resources=dict(eng.resources), max_restarts=-1,
                max_task_retries=0
            )
            self.engines = [actor.remote(cfg.judge.model, eng, seed=i) for i in range(cfg.judge.num_engines)]
            self._wait_started([e.ready.remote() for e in self.engines], start_timeout_s,
                               f"{cfg.judge.num_engines} judge engine(s) of {eng.num_cpus} CPU and {eng.num_gpus} GPU",
                               "lower judge.num_engines or judge.engine.num_cpus/num_gpus, or add nodes")
        tok = tokenizer_path or cfg.reward.tokenizer or cfg.model.path
        worker = ray.remote(RewardScorer).options(num_cpus=cfg.reward.num_cpus, resources=dict(cfg.reward.resources),
                                                  max_restarts=-1, max_task_retries=2, **_driver_secrets(cfg))
        n = num_workers or cfg.reward.num_workers
        self.workers = [worker.remote(cfg.reward, cfg.judge, cfg.cache, tok, self.engines) for _ in range(n)]
        self._wait_started([w.__ray_ready__.remote() for w in self.workers], start_timeout_s,
                           f"{n} reward worker(s) of {cfg.reward.num_cpus} CPU",
                           "lower reward.num_workers or reward.num_cpus, or add nodes")

    def _wait_started(self, refs: list, timeout_s: float, what: str, fix: str) -> None:
        """Bounded: actors the cluster has no room for (or that cannot start) fail here, not as a silent wait in
        the first score()."""
        import ray

        try:
            ray.get(refs, timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            self.shutdown()
            raise RuntimeError(f"{what} did not start within {timeout_s:.0f} s: the cluster lacks the resources "
                               f"({fix})") from None

    def score(self, items: list[ScoreItem]) -> ScoredBatch:
        import ray

        if not items:
            return ScoredBatch([], Counter())
        n = min(len(self.workers), len(items))
        bounds = [round(i * len(items) / n) for i in range(n + 1)]
        refs = [self.workers[i].score.remote(items[bounds[i]:bounds[i + 1]]) for i in range(n)]
        # every judge call inside has its own deadline; this bound only guards against a wedged worker
        timeout = self.cfg.judge.batch_deadline_s * 3 + 120
        parts = ray.get(refs, timeout=timeout)
        out = ScoredBatch([], Counter())
        for p in parts:
            out = out.merge(p)
        return out

    @property
    def num_workers(self) -> int:
        return len(self.workers)

    def shutdown(self) -> None:
        import ray

        for a in self.workers + self.engines:
            ray.kill(a)


def _driver_secrets(cfg) -> dict:
    """The judge's key and the cache's URL and password as the driver reads them, in the reward actors' runtime
    env: an actor on another host would otherwise read its own host's variables (or none). The judge's key is
    checked here, before any actor starts."""
    import os

    env = {}
    if cfg.judge.backend == "http":
        env[cfg.judge.api_key_env] = judge_api_key(cfg.judge)
    for name in (cfg.cache.url_env, cfg.cache.password_env):
        if name and os.environ.get(name):
            env[name] = os.environ[name]
    return {"runtime_env": {"env_vars": env}} if env else {}
