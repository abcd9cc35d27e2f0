"""Prometheus metrics of a run (prometheus-client), served by the driver on ``metrics.port`` with ``/health``.

The contract with the code that counts is typed: the reward workers count with the enums of
``actors.score_stats`` and the driver's run totals with ``RunCount``; every member is mapped to a metric here, and
``RewardMetrics`` refuses to start if one is not (so nothing counted goes unexported). The step's other values
come from the ``metrics.jsonl`` row (``STEP_GAUGES`` names the keys it reads). Names follow Prometheus
conventions: the ``videop2r_`` prefix, base units, ``_total`` counters (prometheus-client appends it), no
per-prompt or per-rollout labels. deploy/monitoring/ holds the dashboard and alert rules built on these names.
"""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from enum import StrEnum
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, make_wsgi_app

from actors.score_stats import ALL_KEYS, NO_VERDICT, CacheResult, JudgeStatus, ScoreCount, cache_key, judge_key
from videoqa.loader import SKIP_REASONS

JUDGE_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class RunCount(StrEnum):
    """The driver's run totals (``RLTrainer.counters``, kept in checkpoints)."""

    REGENERATED_GROUPS = "regenerated_groups"  # too stale: sampled again before training
    RESAMPLED_GROUPS = "resampled_groups"  # flat groups replaced by fresh prompts (dynamic sampling)
    ZEROED_PERCEPTION_STEPS = "zeroed_perception_steps"  # too many missing verdicts: A_P zeroed for the step
    NONFINITE_STEPS = "nonfinite_steps"  # a non-finite loss or gradient: the optimizer step was skipped
    GENERATED_TOKENS = "generated_tokens"
    TRAINED_TOKENS = "trained_tokens"
    SYNC_FAILED = "sync_failed"  # workers that did not receive a weight version (they catch up or restart)
    REFUSED_SCALE_REQUESTS = "refused_scale_requests"  # control-plane worker counts out of range or not a number


class RewardMetrics:
    """The reward workers' counters, summed over a step's scored batches, and the judge's call latency."""

    def __init__(self, registry: CollectorRegistry | None = None):
        r = registry if registry is not None else CollectorRegistry()
        self.registry = r
        self.rollouts = Counter("videop2r_reward_rollouts", "Rollouts scored", registry=r)
        self.judge_outcomes = Counter(
            "videop2r_judge_outcomes",
            "Perception verdicts per rollout, by how they were obtained",
            ["status"],
            registry=r,
        )
        self.verdicts = Counter(
            "videop2r_judge_verdicts",
            "Judged rollouts by outcome: yes, no, or no verdict (unparseable, failed, timeout, deadline)",
            ["outcome"],
            registry=r,
        )
        self.judge_calls = Counter(
            "videop2r_judge_calls", "Judge requests sent (after de-duplication and the cache)", registry=r
        )
        self.judge_seconds = Histogram(
            "videop2r_judge_call_duration_seconds",
            "Wall time of one judge call (a reward worker's batch of requests)",
            buckets=JUDGE_SECONDS_BUCKETS,
            registry=r,
        )
        self.cache = Counter("videop2r_verdict_cache", "Verdict-cache operations by result", ["result"], registry=r)
        self.cache_down_seconds = Counter(
            "videop2r_cache_down_seconds", "Time Redis was unreachable, as the reward workers saw it", registry=r
        )
        self.cache_down_batches = Counter(
            "videop2r_cache_down_batches", "Batches scored while Redis was down", registry=r
        )
        self.cache_disabled_batches = Counter(
            "videop2r_cache_disabled_batches", "Batches scored with the cache off", registry=r
        )
        self.perception_excluded = Counter(
            "videop2r_perception_excluded", "Rollouts left out of perception normalisation (no verdict)", registry=r
        )
        self.worker_starts = Counter(
            "videop2r_reward_worker_starts",
            "Reward workers that scored their first batch (starts and restarts)",
            registry=r,
        )
        self.rescored = Counter(
            "videop2r_reward_chunks_rescored",
            "Reward chunks scored again by another worker (their worker died or its host became unreachable)",
            registry=r,
        )
        # every counted key -> the (metric, labels) it feeds; checked complete against actors.score_stats
        self.targets: dict[str, list] = {judge_key(s): [(self.judge_outcomes, {"status": s})] for s in JudgeStatus}
        for s in NO_VERDICT:
            self.targets[judge_key(s)].append((self.verdicts, {"outcome": s}))
        self.targets |= {cache_key(c): [(self.cache, {"result": c})] for c in CacheResult}
        self.targets |= {
            ScoreCount.ROLLOUTS: [(self.rollouts, {})],
            ScoreCount.JUDGE_CALLS: [(self.judge_calls, {})],
            ScoreCount.VERDICT_YES: [(self.verdicts, {"outcome": "yes"})],
            ScoreCount.VERDICT_NO: [(self.verdicts, {"outcome": "no"})],
            ScoreCount.PERCEPTION_EXCLUDED: [(self.perception_excluded, {})],
            ScoreCount.WORKER_STARTS: [(self.worker_starts, {})],
            ScoreCount.RESCORED_CHUNKS: [(self.rescored, {})],
            ScoreCount.CACHE_DOWN: [(self.cache_down_batches, {})],
            ScoreCount.CACHE_DISABLED: [(self.cache_disabled_batches, {})],
            ScoreCount.CACHE_DOWN_SECONDS: [(self.cache_down_seconds, {})],
        }
        if set(self.targets) != ALL_KEYS:
            raise RuntimeError(f"score counters without a metric: {sorted(ALL_KEYS - set(self.targets))}")
        for targets in self.targets.values():  # export zeros from the start, so rate() works before the first event
            for metric, labels in targets:
                if labels:
                    metric.labels(**labels)

    def record_counts(self, stats: Tally, judge_seconds: list[float] = ()) -> None:
        unknown = set(stats) - ALL_KEYS
        if unknown:  # a counter outside the contract would be lost: refuse it where it is made, not silently
            raise KeyError(f"score counters outside actors.score_stats: {sorted(unknown)}")
        for key, n in stats.items():
            for metric, labels in self.targets[key]:
                (metric.labels(**labels) if labels else metric).inc(n)
        for s in judge_seconds:
            self.judge_seconds.observe(s)


# The step's gauges: metric -> (labels, help, {label values: key of the metrics.jsonl row}). The row is the full
# record of a step; a key missing from it leaves its gauge as it was.
STEP_GAUGES = {
    "videop2r_step": ((), "RL steps completed", {(): "step"}),
    "videop2r_weight_version": ((), "The learner's weight version", {(): "weight_version"}),
    "videop2r_reward": (
        ("process", "part"),
        "Mean reward of the step's rollouts and its parts (VideoP2R Eqs. 3-5)",
        {
            ("perception", "total"): "reward_perception",
            ("reasoning", "total"): "reward_reasoning",
            ("perception", "accuracy"): "accuracy_perception",
            ("reasoning", "accuracy"): "accuracy",
            ("perception", "format"): "format_perception",
            ("reasoning", "format"): "format_reasoning",
            ("perception", "length"): "length_perception",
            ("reasoning", "length"): "length_reasoning",
        },
    ),
    "videop2r_judge_yes_ratio": (
        (),
        "Share of the step's judged observations found sufficient",
        {(): "judge_yes_rate"},
    ),
    "videop2r_flat_groups_ratio": (
        ("process",),
        "Share of groups whose rewards have no variance (no advantage)",
        {("perception",): "flat_groups_frac_perception", ("reasoning",): "flat_groups_frac_reasoning"},
    ),
    "videop2r_segment_tokens": (
        ("segment",),
        "Mean tokens per rollout in each segment",
        {
            ("perception",): "segment_tokens/perception",
            ("reasoning",): "segment_tokens/reasoning",
            ("response",): "response_tokens",
        },
    ),
    "videop2r_loss": ((), "Policy loss", {(): "loss"}),
    "videop2r_kl": ((), "KL to the reference (k3)", {(): "kl"}),
    "videop2r_grad_norm": ((), "Gradient norm before clipping", {(): "grad_norm"}),
    "videop2r_clip_ratio": ((), "Share of tokens where the clipped surrogate is taken", {(): "clip_fraction"}),
    "videop2r_entropy_nats": ((), "Policy entropy (mean surprisal of the sampled tokens)", {(): "entropy"}),
    "videop2r_learning_rate": ((), "Learning rate", {(): "lr"}),
    "videop2r_mismatch_kl": ((), "KL between vLLM's and the learner's log-probs (k3)", {(): "mismatch_kl"}),
    "videop2r_staleness_mean": ((), "Mean weight-version lag of the trained rollouts", {(): "staleness_mean"}),
    "videop2r_staleness_max": ((), "Largest weight-version lag of a trained rollout", {(): "staleness_max"}),
    "videop2r_step_seconds": ((), "Wall time of the last step", {(): "time/step"}),
    "videop2r_step_phase_seconds": (
        ("phase",),
        "Time of each phase of the last step",
        {
            ("decode",): "time/decode",
            ("generate",): "time/generate",
            ("score",): "time/score",
            ("logprobs",): "time/logprobs",
            ("update",): "time/optimize",
            ("sync",): "time/sync",
        },
    ),
    "videop2r_sync_seconds": ((), "Weight broadcast time of the last step", {(): "time/sync"}),
    "videop2r_generated_tokens_per_second": (
        (),
        "Tokens generated per second of generation",
        {(): "generated_tokens_per_s"},
    ),
    "videop2r_trained_tokens_per_second": ((), "Tokens trained per second of update", {(): "trained_tokens_per_s"}),
    "videop2r_padding_ratio": (
        (),
        "Share of the update's padded tokens that is padding (learner.micro_batch_tokens lowers it)",
        {(): "padding_fraction"},
    ),
    "videop2r_rollout_workers_desired": (
        (),
        "Rollout workers asked for (config or `videop2r scale`)",
        {(): "rollout_workers_desired"},
    ),
    "videop2r_rollout_workers": ((), "Rollout workers in the group", {(): "rollout_workers"}),
    "videop2r_rollout_workers_ready": ((), "Rollout workers serving", {(): "rollout_workers_ready"}),
    "videop2r_reward_workers": ((), "Reward workers", {(): "reward_workers"}),
    "videop2r_last_step_timestamp_seconds": (
        (),
        "Unix time the last step finished (the run's start before the first)",
        {(): "time"},
    ),
}
# Run totals in the row (cumulative, so the counters advance by the difference): metric -> (help, row key)
STEP_TOTALS = {
    "videop2r_generated_tokens": ("Tokens generated", f"total/{RunCount.GENERATED_TOKENS}"),
    "videop2r_trained_tokens": ("Tokens trained", f"total/{RunCount.TRAINED_TOKENS}"),
    "videop2r_rollout_worker_restarts": (
        "Rollout workers lost (died or hung) and restarted",
        "rollout_worker_restarts",
    ),
    "videop2r_sync_failures": ("Workers that failed to receive a weight version", f"total/{RunCount.SYNC_FAILED}"),
    "videop2r_groups_regenerated": ("Groups sampled again for being too stale", f"total/{RunCount.REGENERATED_GROUPS}"),
    "videop2r_groups_resampled": ("Flat groups replaced (dynamic sampling)", f"total/{RunCount.RESAMPLED_GROUPS}"),
    "videop2r_perception_zeroed_steps": (
        "Steps trained without perception advantages (missing verdicts)",
        f"total/{RunCount.ZEROED_PERCEPTION_STEPS}",
    ),
    "videop2r_nonfinite_steps": (
        "Steps whose optimizer step was skipped (non-finite)",
        f"total/{RunCount.NONFINITE_STEPS}",
    ),
    "videop2r_scale_requests_refused": (
        "Desired rollout worker counts refused (not 1..rollout.max_workers)",
        f"total/{RunCount.REFUSED_SCALE_REQUESTS}",
    ),
}

_unexported = {f"total/{c}" for c in RunCount} - {key for _, key in STEP_TOTALS.values()}
if _unexported:
    raise RuntimeError(f"run totals without a metric: {sorted(_unexported)}")


class StepMetrics:
    """The run's metrics, served on ``host:port`` (port 0: not served) with prometheus-client's exposition, and
    ``/health``: 200 while steps advance, 503 once none finished for ``stall_after_s``."""

    def __init__(
        self,
        port: int = 0,
        registry: CollectorRegistry | None = None,
        host: str = "127.0.0.1",
        stall_after_s: float = 600.0,
        run_info: dict | None = None,
    ):
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.gauges = {
            name: Gauge(name, doc, list(labels), registry=r) for name, (labels, doc, _) in STEP_GAUGES.items()
        }
        self.totals = {name: Counter(name, doc, registry=r) for name, (doc, _) in STEP_TOTALS.items()}
        self.skipped = Counter("videop2r_inputs_skipped", "Dataset rows skipped, by reason", ["reason"], registry=r)
        for reason in SKIP_REASONS:  # exported as zeros from the start
            self.skipped.labels(reason=reason)
        self.by_type = Gauge(
            "videop2r_accuracy_by_type",
            "Mean reasoning accuracy of the step's rollouts by problem type",
            ["problem_type"],
            registry=r,
        )
        self.rewards = RewardMetrics(r)
        self.info = Info("videop2r_run", "The run: id, algorithm, model", registry=r)
        self.info.info({k: str(v) for k, v in (run_info or {}).items()})
        self._seen: dict[str, float] = {}  # cumulative values already counted
        self.stall_after_s, self.last_progress = stall_after_s, time.time()
        # the start stands in for the last step until there is one (an alert on "no step for 10 minutes" then
        # also catches a run stuck before its first step)
        self.gauges["videop2r_last_step_timestamp_seconds"].set(self.last_progress)
        self.server = _serve(host, port, r, self.health) if port else None

    def health(self) -> tuple[bool, str]:
        idle = time.time() - self.last_progress
        if idle > self.stall_after_s:
            return False, f"no step finished for {idle:.0f} s (metrics.stall_after_s={self.stall_after_s:.0f})\n"
        return True, f"ok: last step {idle:.0f} s ago\n"

    def _advance(self, counter, key: str, value) -> None:
        if isinstance(value, (int, float)):
            delta = float(value) - self._seen.get(key, 0.0)
            if delta > 0:  # a resumed run starts from its checkpoint's totals
                counter.inc(delta)
            self._seen[key] = float(value)

    def record_step(self, row: dict, batch=None) -> None:
        """``row``: the step's metrics.jsonl record; ``batch``: its ``cluster.step_batch.StepBatch`` (the reward
        workers' counters and the judge's latencies)."""
        for name, (labels, _, keys) in STEP_GAUGES.items():
            for values, key in keys.items():
                value = row.get(key)
                if isinstance(value, (int, float)):
                    (self.gauges[name].labels(*values) if labels else self.gauges[name]).set(float(value))
        for name, (_, key) in STEP_TOTALS.items():
            self._advance(self.totals[name], name, row.get(key))
        for reason, n in (row.get("skipped_media") or {}).items():
            self._advance(self.skipped.labels(reason=reason), f"skipped/{reason}", n)
        for t, value in row.items():
            if t.startswith("accuracy/"):
                self.by_type.labels(problem_type=t.split("/", 1)[1]).set(value)
        if batch is not None:
            self.rewards.record_counts(batch.score_stats, batch.judge_seconds)
        self.last_progress = time.time()

    @property
    def port(self) -> int:
        return self.server.server_port if self.server else 0

    def shutdown(self) -> None:
        self.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    # a connection that sends nothing (or half a request) is closed after this many seconds instead of holding its
    # thread for ever: the exporter may listen on 0.0.0.0 (metrics.host), where anyone on the network can connect
    timeout = 10

    def log_message(self, *args) -> None:  # a scrape every few seconds is not console news
        pass


def _serve(host: str, port: int, registry: CollectorRegistry, health) -> _Server:
    metrics = make_wsgi_app(registry)

    def app(environ, start_response):
        if environ.get("PATH_INFO") == "/health":
            ok, text = health()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [text.encode()]
        return metrics(environ, start_response)

    try:
        server = make_server(host, port, app, _Server, handler_class=_QuietHandler)
    except OSError as e:
        from cluster.config_loader import ConfigError

        raise ConfigError(
            f"metrics.port={port} on metrics.host={host}: {e.strerror or e}; choose a free port "
            "(or metrics.port=0 to turn the exporter off)"
        ) from None
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
