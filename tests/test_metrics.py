"""The exporter's contract and its HTTP endpoints (prometheus-client's real exposition, over a real socket)."""

import time
import urllib.error
import urllib.request
from collections import Counter

import pytest

from actors.score_stats import ALL_KEYS, CacheResult, JudgeStatus, ScoreCount, cache_key, judge_key
from cluster.config_loader import ConfigError
from cluster.metrics import STEP_GAUGES, STEP_TOTALS, RewardMetrics, RunCount, StepMetrics
from cluster.services import free_port


def test_every_score_counter_reaches_its_metric():
    """Each key of the contract moves exactly the series it is mapped to (a counter mapped to the wrong label, or
    not at all, fails here), and a key outside the contract is refused instead of silently dropped."""
    m = RewardMetrics()
    value = lambda name, **labels: m.registry.get_sample_value(name, labels) or 0.0  # noqa: E731
    expected = {
        judge_key(JudgeStatus.FAILED): [
            ("videop2r_judge_outcomes_total", {"status": "failed"}),
            ("videop2r_judge_verdicts_total", {"outcome": "failed"}),
        ],
        judge_key(JudgeStatus.CACHED): [("videop2r_judge_outcomes_total", {"status": "cached"})],
        cache_key(CacheResult.SKIPPED_UNAVAILABLE): [
            ("videop2r_verdict_cache_total", {"result": "skipped_unavailable"})
        ],
        ScoreCount.VERDICT_YES: [("videop2r_judge_verdicts_total", {"outcome": "yes"})],
        ScoreCount.VERDICT_NO: [("videop2r_judge_verdicts_total", {"outcome": "no"})],
        ScoreCount.CACHE_DOWN_SECONDS: [("videop2r_cache_down_seconds_total", {})],
        ScoreCount.WORKER_STARTS: [("videop2r_reward_worker_starts_total", {})],
    }
    for key, series in expected.items():
        before = [value(name, **labels) for name, labels in series]
        m.record_counts(Counter({key: 2.5}))
        for (name, labels), was in zip(series, before):
            assert value(name, **labels) - was == 2.5, (key, name)
    everything = Counter({k: 1 for k in ALL_KEYS})
    m.record_counts(everything, judge_seconds=[0.2, 3.0])
    assert m.registry.get_sample_value("videop2r_judge_call_duration_seconds_count") == 2
    assert m.registry.get_sample_value("videop2r_judge_call_duration_seconds_bucket", {"le": "0.25"}) == 1
    with pytest.raises(KeyError, match="judge_okay"):
        m.record_counts(Counter({"judge_okay": 1}))


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_step_metrics_serve_gauges_totals_and_health():
    port = free_port()
    m = StepMetrics(port, stall_after_s=0.5, run_info={"run_id": "r1", "algorithm": "pa_grpo", "model": "/m"})
    try:
        row = {
            "step": 3,
            "reward_perception": 1.5,
            "accuracy_perception": 0.75,
            "accuracy": 0.5,
            "time/optimize": 2.0,
            "accuracy/multiple choice": 0.25,
            f"total/{RunCount.GENERATED_TOKENS}": 100,
            "skipped_media": {"corrupt": 2},
            "rollout_worker_restarts": 1,
        }
        m.record_step(row)
        status, text = _get(port, "/health")
        assert status == 200 and text.startswith("ok")
        status, text = _get(port, "/metrics")
        assert status == 200
        for line in (
            "videop2r_step 3.0",
            'videop2r_reward{part="total",process="perception"} 1.5',
            'videop2r_reward{part="accuracy",process="perception"} 0.75',
            'videop2r_reward{part="accuracy",process="reasoning"} 0.5',
            'videop2r_step_phase_seconds{phase="update"} 2.0',
            'videop2r_accuracy_by_type{problem_type="multiple choice"} 0.25',
            "videop2r_generated_tokens_total 100.0",
            'videop2r_inputs_skipped_total{reason="corrupt"} 2.0',
            "videop2r_rollout_worker_restarts_total 1.0",
            'videop2r_run_info{algorithm="pa_grpo",model="/m",run_id="r1"} 1.0',
        ):
            assert line in text, line
        # run totals are cumulative in the row: the counters advance by the difference
        m.record_step({**row, f"total/{RunCount.GENERATED_TOKENS}": 160, "skipped_media": {"corrupt": 3}})
        assert m.registry.get_sample_value("videop2r_generated_tokens_total") == 160
        assert m.registry.get_sample_value("videop2r_inputs_skipped_total", {"reason": "corrupt"}) == 3
        time.sleep(0.7)  # no step for longer than stall_after_s
        status, text = _get(port, "/health")
        assert status == 503 and "no step finished" in text
        with pytest.raises(ConfigError, match=f"metrics.port={port}.*free port"):
            StepMetrics(port)  # taken: a one-line start-up error
    finally:
        m.close()


def test_every_run_total_and_gauge_name_follows_the_conventions():
    assert {f"total/{c}" for c in RunCount} <= {key for _, key in STEP_TOTALS.values()}
    for name in [*STEP_GAUGES, *STEP_TOTALS]:
        assert name.startswith("videop2r_") and not name.endswith("_total"), name  # the client appends _total


def test_vllm_engine_metrics_are_published_under_ray_names():
    from types import SimpleNamespace as M

    from actors.engine_metrics import published_values

    labels = {"model_name": "/models/x", "engine": "0"}
    got = published_values(
        [
            M(name="vllm:generation_tokens", labels=labels, value=12),
            M(name="vllm:kv_cache_usage_perc", labels=labels, value=None),
            M(name="vllm:time_to_first_token_seconds", labels=labels, count=3, sum=0.6),
            M(name="vllm:cache_config_info", labels=labels, value=1.0),  # not exported (a label per setting)
        ],
        "rollout-0",
    )
    assert got == {
        ("vllm_generation_tokens_total", ("rollout-0", "0")): 12.0,
        ("vllm_kv_cache_usage_perc", ("rollout-0", "0")): 0.0,
        ("vllm_time_to_first_token_seconds_count", ("rollout-0", "0")): 3.0,
        ("vllm_time_to_first_token_seconds_sum", ("rollout-0", "0")): 0.6,
    }


def test_an_idle_connection_is_closed_and_does_not_hold_the_exporter(monkeypatch):
    """A client that connects and sends nothing is cut off after the handler's timeout (catches an exporter with no
    socket timeout: on 0.0.0.0 anyone could hold its threads for ever), and scrapes meanwhile are still answered."""
    import socket

    from cluster import metrics

    monkeypatch.setattr(metrics._QuietHandler, "timeout", 0.5)
    port = free_port()
    m = StepMetrics(port)
    try:
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
        assert _get(port, "/health")[0] == 200  # answered while the idle connections are open
        time.sleep(1.0)
        for s in idle:
            s.settimeout(3)
            assert s.recv(1) == b""  # the server closed it (without a timeout, recv waits and times out here)
            s.close()
    finally:
        m.close()
