"""vLLM's own engine metrics, published from inside a Ray actor.

An offline ``vllm.LLM`` keeps its metrics (with ``disable_log_stats=False``) in the actor process's Prometheus
registry, which nothing scrapes; Ray's metrics agent on every node is scraped (deploy/monitoring), so after each
call the worker copies a fixed set of vLLM's metrics into Ray gauges: ``vllm:generation_tokens`` becomes
``ray_vllm_generation_tokens_total`` (cumulative), a histogram its ``_count`` and ``_sum``. Labels: vLLM's engine
index and the worker's name (not the model path).
"""

from __future__ import annotations

# vLLM metric -> kind; counters and histograms are published as their running totals
EXPORTED = {
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:num_preemptions": "counter",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:prefix_cache_queries": "counter",
    "vllm:prefix_cache_hits": "counter",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
}
TAGS = ("worker", "engine")


def published_values(metrics: list, worker: str) -> dict[tuple[str, tuple], float]:
    """(Ray metric name, tag values) -> value, for the exported subset of ``LLM.get_metrics()``."""
    out: dict[tuple[str, tuple], float] = {}
    for m in metrics:
        kind = EXPORTED.get(m.name)
        if kind is None:
            continue
        base = "vllm_" + m.name.split(":", 1)[1]
        tags = (worker, str(m.labels.get("engine", "0")))
        if kind == "histogram":
            out[(base + "_count", tags)] = float(m.count)
            out[(base + "_sum", tags)] = float(m.sum)
        else:
            out[(base + ("_total" if kind == "counter" else ""), tags)] = float(m.value or 0)
    return out


class EngineMetrics:
    def __init__(self, worker: str):
        self.worker, self.gauges = worker, {}

    def publish(self, llm) -> None:
        import ray
        from ray.util.metrics import Gauge

        if not ray.is_initialized():  # the worker used in-process (benchmarks): nothing to publish through
            return
        for (name, tags), value in published_values(llm.get_metrics(), self.worker).items():
            if name not in self.gauges:
                self.gauges[name] = Gauge(name, f"vLLM's {name[5:]} (a rollout worker's engine)", tag_keys=TAGS)
            self.gauges[name].set(value, tags=dict(zip(TAGS, tags)))
