"""Prometheus metrics of a run (prometheus-client). The driver records each step's counters here; Prometheus
scrapes them and the Grafana dashboards in deploy/ plot them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

JUDGE_STATUSES = ("ok", "cached", "unparseable", "failed", "timeout", "deadline", "not_needed")
# foreign: an entry stored by another judge identity (or without a verdict), ignored and judged again
CACHE_RESULTS = ("hits", "misses", "writes", "unavailable", "corrupt", "foreign")


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


# The step metrics the driver exports: metric name -> (key of the metrics.jsonl row, help). The jsonl row is the
# full record; Prometheus gets these gauges (issue: monitoring extends this list and the dashboards).
STEP_GAUGES = {
    "videop2r_step": ("step", "RL steps completed"),
    "videop2r_weight_version": ("weight_version", "The learner's weight version"),
    "videop2r_reward_perception": ("reward_perception", "Mean R_P of the step's rollouts"),
    "videop2r_reward_reasoning": ("reward_reasoning", "Mean R_R of the step's rollouts"),
    "videop2r_accuracy": ("accuracy", "Mean reasoning accuracy of the step's rollouts"),
    "videop2r_judge_yes_rate": ("judge_yes_rate", "Share of judged observations found sufficient"),
    "videop2r_loss": ("loss", "Policy loss"),
    "videop2r_kl": ("kl", "KL to the reference (k3)"),
    "videop2r_mismatch_kl": ("mismatch_kl", "KL between vLLM's and the learner's log-probs (k3)"),
    "videop2r_staleness_max": ("staleness_max", "Largest weight-version lag of a trained rollout"),
    "videop2r_step_seconds": ("time/step", "Wall time of the last step"),
    "videop2r_rollout_workers": ("rollout_workers", "Rollout workers in the group"),
    "videop2r_rollout_workers_ready": ("rollout_workers_ready", "Rollout workers serving"),
    "videop2r_last_step_timestamp_seconds": ("time", "Unix time the last step finished"),
}


class StepMetrics:
    """Gauges of the last step, served on ``metrics.port`` (0: not served) with prometheus-client's exposition."""

    def __init__(self, port: int = 0, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        self.gauges = {name: Gauge(name, doc, registry=self.registry) for name, (_, doc) in STEP_GAUGES.items()}
        self.rewards = RewardMetrics(self.registry)
        self.server = None
        if port:
            from prometheus_client import start_http_server

            self.server, _ = start_http_server(port, addr="127.0.0.1", registry=self.registry)

    def record_step(self, row: dict) -> None:
        for name, (key, _) in STEP_GAUGES.items():
            value = row.get(key)
            if isinstance(value, (int, float)):
                self.gauges[name].set(float(value))

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
