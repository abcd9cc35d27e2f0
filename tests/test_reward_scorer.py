"""The reward scorer with the oracle and HTTP judges, the real Redis verdict cache, and injected judge faults."""

import logging
import time

import pytest

from actors.reward_scorer import RewardScorer, ScoreItem
from cluster.config import Config
from cluster.config_loader import load_config
from cluster.metrics import RewardMetrics
from cluster.services import RedisServer, free_port
from videoqa.prompts import sft_target
from videoqa.schema import load_samples


def cfg_with(*overrides):
    base = ["reward.perception_length=[5, 60]", "reward.reasoning_length=[5, 60]"]
    return load_config(Config, None, base + list(overrides))


def scorer(cfg, tiny_model_dir=None):
    return RewardScorer(cfg.reward, cfg.judge, cfg.cache, str(tiny_model_dir) if tiny_model_dir else None)


@pytest.fixture(scope="module")
def cot(synthetic_dir):
    return load_samples(synthetic_dir / "cot.json")


def items_for(samples, response_fn):
    return [ScoreItem.from_sample(s, response_fn(s)) for s in samples]


def test_oracle_rewards_for_perfect_and_broken_responses(cot, tiny_model_dir):
    cfg = cfg_with("cache.enabled=false")
    sc = scorer(cfg, tiny_model_dir)
    perfect = sc.score(items_for(cot[:10], sft_target))
    for s, r in zip(cot[:10], perfect.rewards):
        assert (r.acc_p, r.form_p, r.acc_r, r.form_r) == (1.0, 1.0, 1.0, 1.0), s.problem_id
        assert r.len_p == 0.2 and r.len_r == 0.2  # the synthetic CoT is 5..60 tokens per process
    assert perfect.stats["judge_ok"] == 10 and perfect.stats["cache_disabled"] == 1
    assert perfect.stats["verdict_yes"] == 10 and perfect.stats["verdict_no"] == 0
    assert len(perfect.judge_seconds) == 1 and perfect.judge_seconds[0] >= 0  # one judge call, timed

    def wrong_observation(s):  # right answer, but the observation states nothing the answer needs
        return f"<observation>I see some shapes.</observation><think>{s.process}</think><answer>{s.answer}</answer>"

    blind = sc.score(items_for(cot[:10], wrong_observation))
    for r in blind.rewards:
        assert r.acc_p == 0.0 and r.form_p == 1.0 and r.len_p == 0.0 and r.acc_r == 1.0
    assert blind.stats["verdict_no"] == 10 and blind.stats["verdict_yes"] == 0  # "No" verdicts counted as such
    untagged = sc.score(items_for(cot[:5], lambda s: s.answer))
    for r in untagged.rewards:
        assert r.perception == 0.0 and r.reasoning == 0.0
    assert untagged.stats["judge_not_needed"] == 5 and untagged.stats["judge_calls"] == 0
    assert untagged.judge_seconds == []  # no call, no latency sample


def test_multiple_choice_judge_sees_the_option_text(cot):
    mc = next(s for s in cot if s.problem_type == "multiple choice")
    item = ScoreItem.from_sample(mc, "x")
    assert item.correct_answer in mc.options and item.correct_answer.startswith(mc.answer + ". ")
    assert "Options:" in item.question


def test_duplicate_observations_are_judged_once(cot):
    sc = scorer(cfg_with("cache.enabled=false"))
    batch = sc.score(items_for([cot[0]] * 8, sft_target))  # a group of 8 identical rollouts
    assert batch.stats["judge_calls"] == 1 and batch.stats["judge_ok"] == 8


def test_the_oracle_tells_apart_rows_with_the_same_texts_but_other_facts(cot, redis_server):
    """The oracle's verdict depends on the row's facts: two rollouts with the same question, answer and observation
    but other facts get their own verdicts, in one batch and through the shared cache (catches a verdict key, or the
    batch's dedup, that leaves the facts out: the second row would get the first one's cached Yes)."""
    import dataclasses

    mc = next(s for s in cot if s.extra.get("facts", {}).get("kind") == "direction")
    right = ScoreItem.from_sample(mc, sft_target(mc))
    other = dataclasses.replace(right, facts={**right.facts, "target": "no such shape"})
    batch = scorer(cfg_with("cache.enabled=false")).score([right, other])
    assert [r.acc_p for r in batch.rewards] == [1.0, 0.0] and batch.stats["judge_calls"] == 2
    redis_server.client.flushall()
    cfg = cfg_with(f"cache.url={redis_server.url}")
    assert scorer(cfg).score([right]).rewards[0].acc_p == 1.0
    second = scorer(cfg).score([other])  # another worker, the same texts: not the first row's cached verdict
    assert second.rewards[0].acc_p == 0.0 and second.stats["cache_hits"] == 0


def test_cache_shared_across_workers_and_ttl(cot, redis_server):
    redis_server.client.flushall()
    cfg = cfg_with(f"cache.url={redis_server.url}", "cache.ttl_s=2")
    a, b = scorer(cfg), scorer(cfg)
    first = a.score(items_for(cot[:6], sft_target))
    assert first.stats["cache_misses"] == 6 and first.stats["cache_writes"] == 6 and first.stats["judge_calls"] == 6
    second = b.score(items_for(cot[:6], sft_target))  # another worker: every verdict comes from Redis
    assert second.stats["cache_hits"] == 6 and second.stats["judge_calls"] == 0
    assert second.stats["judge_cached"] == 6
    assert [r.acc_p for r in second.rewards] == [r.acc_p for r in first.rewards]
    keys = redis_server.client.keys("videop2r:verdict:*")
    assert len(keys) == 6
    value = redis_server.client.get(keys[0]).decode()
    assert value.startswith("{") and '"verdict": true' in value  # JSON, not pickle
    assert 0 < redis_server.client.ttl(keys[0]) <= 2
    time.sleep(2.2)
    expired = b.score(items_for(cot[:6], sft_target))
    assert expired.stats["cache_misses"] == 6 and expired.stats["judge_calls"] == 6


def test_a_cached_verdict_counts_only_for_the_judge_that_gave_it(cot, tmp_path):
    """An entry whose stored judge differs (a key collision, another judge writing the same key) is ignored and
    judged again, counted; judges are told apart by their full identity, not their folder's name."""
    import json
    import os

    from actors.judges import model_fingerprint

    server = RedisServer(tmp_path / "redis")
    try:
        sc = scorer(cfg_with(f"cache.url={server.url}"))
        assert sc.score(items_for(cot[:3], sft_target)).stats["cache_writes"] == 3
        keys = sorted(server.client.keys("videop2r:verdict:*"))
        entry = json.loads(server.client.get(keys[0]))
        assert entry["judge"] == sc.judge.model_id
        server.client.set(keys[0], json.dumps({**entry, "judge": "vllm:/elsewhere/judge@0|t=0.0|n=256"}))
        again = sc.score(items_for(cot[:3], sft_target))
        assert again.stats["cache_foreign"] == 1 and again.stats["cache_hits"] == 3 and again.stats["judge_calls"] == 1
    finally:
        server.stop()
    a, b = tmp_path / "a" / "judge", tmp_path / "b" / "judge"
    for d in (a, b):
        d.mkdir(parents=True)
        (d / "config.json").write_text('{"model_type": "qwen2"}')
        (d / "model.safetensors").write_bytes(b"w" * 10)
    os.utime(b / "model.safetensors", ns=(1, 1))
    os.utime(a / "model.safetensors", ns=(1, 1))
    assert model_fingerprint(a) != model_fingerprint(b)  # same folder name and files, another place
    before = model_fingerprint(a)
    (a / "model.safetensors").write_bytes(b"v" * 10)  # weights replaced in place
    assert model_fingerprint(a) != before


def test_redis_killed_mid_run(cot, tmp_path, caplog):
    server = RedisServer(tmp_path)
    cfg = cfg_with(f"cache.url={server.url}", "cache.retry_after_s=60")
    sc = scorer(cfg)
    up = sc.score(items_for(cot[:4], sft_target))
    assert up.stats["cache_writes"] == 4 and up.stats["cache_down_seconds"] == 0
    server.stop()
    caplog.set_level(logging.WARNING)
    t0 = time.monotonic()
    down = sc.score(items_for(cot[:8], sft_target))
    again = sc.score(items_for(cot[:8], sft_target))
    elapsed = time.monotonic() - t0
    assert elapsed < 5  # no hang on the dead Redis
    # the outage is timed from the first failure, and reported in pieces (each batch adds the time since the last)
    assert 0 < down.stats["cache_down_seconds"] + again.stats["cache_down_seconds"] <= elapsed
    assert again.stats["cache_down_seconds"] > 0
    assert [r.acc_p for r in down.rewards] == [1.0] * 8 and [r.acc_p for r in again.rewards] == [1.0] * 8
    assert down.stats["cache_unavailable"] == 1 and down.stats["cache_down"] == 1
    assert again.stats["cache_skipped_unavailable"] == 8  # not retried until retry_after_s
    warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(warnings) == 1 and str(server.port) in warnings[0].getMessage()
    metrics = RewardMetrics()
    metrics.record_counts(down.stats, down.judge_seconds)
    assert metrics.registry.get_sample_value("videop2r_verdict_cache_total", {"result": "unavailable"}) == 1


def test_redis_refusing_writes_and_foreign_values_score_uncached(cot, tmp_path):
    """A server that answers with errors (OOM under maxmemory) is an outage, and a cached value that is not a
    verdict entry is judged again; neither crashes scoring."""
    server = RedisServer(tmp_path)
    try:
        cfg = cfg_with(f"cache.url={server.url}", "cache.retry_after_s=0")
        sc = scorer(cfg)
        first = sc.score(items_for(cot[:3], sft_target))
        keys = sorted(server.client.keys("videop2r:verdict:*"))
        assert first.stats["cache_writes"] == 3 and len(keys) == 3
        server.client.set(keys[0], "5")  # valid JSON, not an entry
        server.client.set(keys[1], "[true]")
        server.client.config_set("maxmemory", 1)  # every write is now refused with an OOM error
        server.client.config_set("maxmemory-policy", "noeviction")
        again = sc.score(items_for(cot[:4], sft_target))
        assert [r.acc_p for r in again.rewards] == [1.0] * 4
        assert again.stats["cache_corrupt"] == 2 and again.stats["cache_hits"] == 1
        assert again.stats["cache_unavailable"] == 1 and again.stats["judge_calls"] == 3  # the write failed, counted
    finally:
        server.stop()


def test_local_redis_is_private_and_wins_over_the_environment(ray_cluster, monkeypatch, tmp_path):
    """cache.start_local: a random password (the loopback port is open to every user of the machine), the
    server's folder removed on exit, and VIDEOP2R_REDIS_URL pointing elsewhere does not divert the run."""
    import redis

    from actors.verdict_cache import VerdictCache
    from cluster.config_loader import dump_config
    from cluster.run_dir import RunDir
    from cluster.stack import Stack

    monkeypatch.setenv("VIDEOP2R_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    monkeypatch.setenv("REDIS_PASSWORD", "someone-elses")
    cfg = cfg_with("cache.start_local=true")
    with Stack(cfg) as stack:
        server = stack.redis
        assert stack.redis_url() == server.url and stack.redis_password() is None
        cache = VerdictCache.from_config(cfg.cache)  # what each reward actor builds from the config
        cache.put_many({"k": {"v": 1}})
        assert cache.get_many(["k"]) == [{"v": 1}] and cache.stats["unavailable"] == 0
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(server.address, socket_timeout=2).ping()
        assert server.password not in dump_config(cfg)
        run = RunDir(tmp_path / "run")
        run.path.mkdir()
        run.write_control("r1", stack.redis_url(), cfg.cache.password_env)
        assert (run.path / "control.json").stat().st_mode & 0o777 == 0o600
        workdir = server.workdir
        assert workdir.is_dir()
    assert not workdir.exists() and server.proc.poll() is not None


def test_no_redis_at_all_still_scores(cot):
    cfg = cfg_with(f"cache.url=redis://127.0.0.1:{free_port()}/0")
    batch = scorer(cfg).score(items_for(cot[:3], sft_target))
    assert [r.acc_p for r in batch.rewards] == [1.0] * 3 and batch.stats["cache_unavailable"] == 1
