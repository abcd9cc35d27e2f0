"""The reward pool: N reward-worker Ray actors (N from config, independent of the rollout workers) and, for the
vllm judge backend, the judge-engine actors they share.

``RewardPool.score(items)`` splits a batch into contiguous, even chunks, scores them in parallel and returns the
rewards in input order with the summed counters. A chunk whose worker dies or becomes unreachable (its host cut off
or gone) is scored again, whole, by another worker, and counted (``rescored_chunks``); scoring is idempotent (the
judge's verdicts are cached). Ray restarts the lost worker; it takes chunks again once it answers.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque

from actors.reward_scorer import RewardScorer, ScoredBatch, ScoreItem
from actors.judges import JudgeEngine, judge_api_key
from actors.redaction import Secrets
from actors.score_stats import ScoreCount

log = logging.getLogger(__name__)


class RewardPool:
    def __init__(
        self, cfg, tokenizer_path: str | None = None, num_workers: int | None = None, start_timeout_s: float = 300
    ):
        """``cfg`` is the run ``Config``; ``tokenizer_path`` defaults to ``reward.tokenizer`` then ``model.path``."""
        import ray

        self.cfg = cfg
        self.engines, self.workers = [], []
        if cfg.judge.backend == "vllm":
            eng = cfg.judge.engine
            actor = ray.remote(JudgeEngine).options(
                num_cpus=eng.num_cpus,
                num_gpus=eng.num_gpus,
                resources=dict(eng.resources),
                max_restarts=-1,
                max_task_retries=0,
            )
            self.engines = [actor.remote(cfg.judge.model, eng, seed=i) for i in range(cfg.judge.num_engines)]
            self._wait_started(
                [e.ready.remote() for e in self.engines],
                start_timeout_s,
                "judge engine(s)",
                {"CPU": eng.num_cpus, "GPU": eng.num_gpus, **eng.resources},
                "lower judge.num_engines or judge.engine.num_cpus/num_gpus, or add nodes",
            )
        tok = tokenizer_path or cfg.reward.tokenizer or cfg.model.path
        worker = ray.remote(RewardScorer).options(
            num_cpus=cfg.reward.num_cpus, resources=dict(cfg.reward.resources), max_restarts=-1, max_task_retries=0
        )
        n = num_workers or cfg.reward.num_workers
        secrets = driver_secrets(cfg)  # an argument, set again by each restart of the actor
        self.workers = [worker.remote(cfg.reward, cfg.judge, cfg.cache, tok, self.engines, secrets) for _ in range(n)]
        # lost worker -> (its readiness call, which answers once it is back, or None; when to ask again)
        self.returning: dict[int, tuple] = {}
        self.dead: set[int] = set()  # workers Ray will not restart
        self._wait_started(
            [w.__ray_ready__.remote() for w in self.workers],
            start_timeout_s,
            "reward worker(s)",
            {"CPU": cfg.reward.num_cpus, **cfg.reward.resources},
            "lower reward.num_workers or reward.num_cpus, or add nodes",
        )

    def _wait_started(self, refs: list, timeout_s: float, what: str, need: dict, fix: str) -> None:
        """Bounded (the clock stops while the autoscaler brings nodes up): actors the cluster has no room for (or
        that cannot start) fail here, naming what each node lacks, not as a silent wait in the first score()."""
        import ray

        from actors.cluster_view import lacking, start_clock

        clock, waiting = start_clock(timeout_s, what), list(refs)
        while waiting:
            if clock.expired():
                self.shutdown()
                raise RuntimeError(
                    f"{len(waiting)} of {len(refs)} {what} did not start within {timeout_s:.0f} s: "
                    f"{lacking(need, len(waiting))} ({fix})"
                )
            _, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=clock.step())
        ray.get(refs)  # an actor that failed in its constructor raises here, as it did before

    def score(self, items: list[ScoreItem]) -> ScoredBatch:
        import ray
        from ray.exceptions import RayActorError

        if not items:
            return ScoredBatch([], Counter())
        # every judge call inside has its own deadline; this bound only guards against a wedged worker
        deadline = time.monotonic() + self.cfg.judge.batch_deadline_s * 3 + 120
        live = self._live()
        n = max(1, min(len(live) or 1, len(items)))
        bounds = [round(i * len(items) / n) for i in range(n + 1)]
        chunks = [items[bounds[i] : bounds[i + 1]] for i in range(n)]
        queue, parts, inflight = deque(range(n)), [None] * n, {}  # inflight: ref -> (chunk, worker)
        rescored = 0
        while queue or inflight:
            busy = {w for _, w in inflight.values()}
            for w in self._live():
                if queue and w not in busy:
                    ci = queue.popleft()
                    inflight[self.workers[w].score.remote(chunks[ci])] = (ci, w)
            if not inflight and not self.returning:
                raise RuntimeError("every reward worker is gone; the batch cannot be scored")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"reward batch not scored within {self.cfg.judge.batch_deadline_s * 3 + 120:.0f} s "
                    "(3 x judge.batch_deadline_s + 120)"
                )
            waiting = list(inflight) + [ref for ref, _ in self.returning.values() if ref is not None]
            if not waiting:  # only workers to ask again later
                time.sleep(0.5)
                continue
            done, _ = ray.wait(waiting, num_returns=1, timeout=min(left, 5.0))
            for ref in done:
                if ref not in inflight:
                    continue  # a lost worker answering again: _live() takes it back
                ci, w = inflight.pop(ref)
                try:
                    parts[ci] = ray.get(ref)
                except RayActorError as e:  # died, or its host is unreachable: the chunk goes to another worker
                    queue.append(ci)
                    rescored += 1
                    self.returning[w] = (self.workers[w].__ray_ready__.remote(), 0.0)
                    log.warning(
                        "reward worker %d lost (%s); its chunk of %d rollouts is scored again by another",
                        w,
                        type(e).__name__,
                        len(chunks[ci]),
                    )
        out = ScoredBatch([], Counter({ScoreCount.RESCORED_CHUNKS: rescored} if rescored else {}))
        for p in parts:
            out = out.merge(p)
        return out

    def _live(self) -> list[int]:
        """The workers that take chunks: all but those lost and not answering again yet (asked every few seconds:
        a call to a worker Ray is still restarting may fail at once) and those Ray will not restart."""
        import ray

        now = time.monotonic()
        for w, (ref, ask_at) in list(self.returning.items()):
            if ref is None:
                if now >= ask_at:
                    self.returning[w] = (self.workers[w].__ray_ready__.remote(), 0.0)
                continue
            ready, _ = ray.wait([ref], timeout=0)
            if not ready:
                continue
            try:
                ray.get(ref)
                del self.returning[w]  # restarted: it takes chunks again
            except ray.exceptions.ActorDiedError:  # out of restarts (or killed for good): never again
                del self.returning[w]
                self.dead.add(w)
            except ray.exceptions.RayActorError:  # still unreachable or restarting: ask again later
                self.returning[w] = (None, now + 2.0)
        return [w for w in range(len(self.workers)) if w not in self.returning and w not in self.dead]

    @property
    def num_workers(self) -> int:
        return len(self.workers)

    def shutdown(self) -> None:
        import ray

        for a in self.workers + self.engines:
            ray.kill(a)


def driver_secrets(cfg) -> Secrets:
    """The judge's key and the cache's URL and password as the driver reads them, for the reward actors (an actor
    on another host would otherwise read its own host's variables, or none), as an argument, never a runtime env
    (``actors.redaction.Secrets``). The judge's key is checked here, before any actor starts."""
    import os

    env = Secrets()
    if cfg.judge.backend == "http":
        env[cfg.judge.api_key_env] = judge_api_key(cfg.judge)
    for name in (cfg.cache.url_env, cfg.cache.password_env):
        if name and os.environ.get(name):
            env[name] = os.environ[name]
    return env
