"""Prometheus metrics of a run (prometheus-client). The driver records each step's counters here; Prometheus
scrapes them and the Grafana dashboards in deploy/ plot them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

JUDGE_STATUSES = ("ok", "cached", "unparseable", "failed", "timeout", "deadline", "not_needed")
CACHE_RESULTS = ("hits", "misses", "writes", "unavailable", "corrupt")


class RewardMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        r = registry if registry is not None else CollectorRegistry()
        self.registry = r
        self.rollouts = Counter("videop2r_reward_rollouts", "Rollouts scored", registry=r)
        self.judge_outcomes = Counter(
            "videop2r_judge_outcomes", "Perception verdicts per rollout, by how they were obtained", ["status"], registry=r
        )
        self.judge_calls = Counter("videop2r_judge_calls", "Judge requests sent (after de-duplication and the cache)",
                                   registry=r)
        self.cache = Counter("videop2r_verdict_cache", "Verdict-cache operations by result", ["result"], registry=r)
        self.perception_excluded = Counter(
            "videop2r_perception_excluded", "Rollouts left out of perception normalisation (no verdict)", registry=r
        )
        self.reward_mean = Gauge("videop2r_reward_mean", "Mean reward of the last scored batch", ["process"], registry=r)
        for s in JUDGE_STATUSES:  # export zeros from the start, so rate() works before the first failure
            self.judge_outcomes.labels(status=s)
        for c in CACHE_RESULTS:
            self.cache.labels(result=c)

    def record(self, batch) -> None:
        """``batch`` is an ``actors.reward_scorer.ScoredBatch``."""
        st = batch.stats
        self.rollouts.inc(st.get("rollouts", 0))
        self.judge_calls.inc(st.get("judge_calls", 0))
        self.perception_excluded.inc(st.get("perception_excluded", 0))
        for s in JUDGE_STATUSES:
            self.judge_outcomes.labels(status=s).inc(st.get(f"judge_{s}", 0))
        for c in CACHE_RESULTS:
            self.cache.labels(result=c).inc(st.get(f"cache_{c}", 0))
        if batch.rewards:
            n = len(batch.rewards)
            self.reward_mean.labels(process="perception").set(sum(r.perception for r in batch.rewards) / n)
            self.reward_mean.labels(process="reasoning").set(sum(r.reasoning for r in batch.rewards) / n)
