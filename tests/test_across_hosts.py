"""The multi-host start-up checks and error lines, without a cluster (tests/test_multihost.py runs them for real)."""

import os
import time

import pytest

from cluster.across_hosts import check_reachable, config_digest, is_loopback, loopback_settings, probe, write_marker
from cluster.config import Config
from cluster.config_loader import ConfigError, load_config
from tests.conftest import ROOT


def cfg(*overrides):
    return load_config(Config, ROOT / "configs" / "demo.yaml", list(overrides))


@pytest.mark.parametrize(
    "host,loop",
    [
        ("127.0.0.1", True),
        ("127.0.1.1", True),
        ("localhost", True),
        ("::1", True),
        ("0.0.0.0", True),
        ("[::]", True),
        ("10.0.0.5", False),
        ("redis.svc", False),
        (None, False),
    ],
)
def test_loopback_names(host, loop):
    """Catches: Debian's 127.0.1.1 or the wildcard address taken for a reachable one."""
    assert is_loopback(host) is loop


def test_loopback_settings_name_each_service_and_keep_the_password_out():
    """Catches: a loopback judge, cache or transport host passing to other hosts; a cache password in the message;
    a run-started Redis (which binds the node's address) refused."""
    c = cfg(
        "judge.backend=http",
        "judge.model=m",
        "judge.base_url=http://localhost:8000/v1",
        "cache.start_local=false",
        "cache.url=redis://:pw@127.0.0.1:6379/0",
        "transport.host=127.0.0.1",
    )
    found = loopback_settings(c, c.cache.url)
    assert [f.split()[0] for f in found] == ["cache.url", "judge.base_url", "transport.host"]
    assert not any("pw" in f for f in found)
    ok = cfg(
        "cache.start_local=true",
        "judge.backend=http",
        "judge.model=m",
        "judge.allow_insecure_http=true",
        "judge.base_url=http://10.1.2.3:8000/v1",
    )
    assert loopback_settings(ok, "redis://127.0.0.1:6379/0") == []
    assert loopback_settings(cfg("cache.enabled=false"), "redis://127.0.0.1:6379/0") == []


def test_a_lone_node_keeps_its_loopback(ray_cluster):
    """Catches: the check refusing the single-box demo (one node: its loopback is everyone's)."""
    check_reachable(cfg("cache.url=redis://127.0.0.1:1/0"), "redis://127.0.0.1:1/0")


@pytest.mark.parametrize(
    "override,words", [("transport.host=0.0.0.0", "transport.host"), ("rollout.temperature=0", "rollout.temperature")]
)
def test_settings_no_host_could_use_are_refused_at_load(override, words):
    """Catches: a wildcard handed to workers as the address to connect to; greedy sampling of a group, which
    vLLM refuses only once the first rollout is requested."""
    with pytest.raises(ConfigError, match=words):
        cfg(override)


def test_the_storage_probe_names_what_a_host_does_not_see(tmp_path, tiny_model_dir):
    """Catches: a host without the shared run folder or with another model passing the check."""
    out = tmp_path / "run"
    token = write_marker(str(out))
    expect = {
        "out_dir": str(out),
        "token": token,
        "model_path": str(tiny_model_dir),
        "model_digest": config_digest(str(tiny_model_dir)),
    }
    assert probe(expect)["missing"] == []
    assert probe({**expect, "token": "other"})["missing"] == [f"run.out_dir {out}"]  # another folder at that path
    other = tmp_path / "model"
    other.mkdir()
    (other / "config.json").write_text("{}")
    assert probe({**expect, "model_path": str(other)})["missing"] == [f"model.path {other}"]


def test_paths_are_made_absolute_without_following_symlinks(tmp_path, monkeypatch):
    """Catches: Path.resolve() replacing the path every host shares by one host's mount; a relative model path
    reaching actors whose working folder is not the driver's; an endpoint's model name taken for a folder."""
    from cluster.config_paths import absolute_paths

    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "judge").mkdir()  # a folder that happens to carry the http judge's model name
    monkeypatch.chdir(tmp_path)
    c = absolute_paths(
        cfg(
            "model.path=link",
            "run.out_dir=runs/x",
            "judge.backend=http",
            "judge.model=judge",
            "judge.base_url=http://127.0.0.1:8000/v1",
        )
    )
    assert c.model.path == str(tmp_path / "link") and c.run.out_dir == str(tmp_path / "runs" / "x")
    assert c.judge.model == "judge"
    assert os.path.realpath(c.model.path) == str(tmp_path / "real")


def test_ray_errors_become_one_line_naming_the_host():
    """Catches: Ray's traceback (or an AttributeError from its wrapped exception class) reaching the console."""
    import ray.exceptions as rx

    from cluster.services import ray_error_line

    class StepFailed(ValueError):
        pass

    wrapped = rx.RayTaskError(
        "rl_step",
        "Traceback (most recent call last):\nStepFailed: x",
        StepFailed("bad batch"),
        proctitle="ray::LearnerRank.rl_step",
        pid=7,
        ip="10.9.0.12",
    ).as_instanceof_cause()
    assert ray_error_line(wrapped) == "LearnerRank.rl_step failed on 10.9.0.12: StepFailed: bad batch"
    died = rx.ActorDiedError()
    assert ray_error_line(died).startswith("a Ray actor died")
    assert ray_error_line(ValueError("mine")) is None


def test_only_a_dead_engine_restarts_a_rollout_worker(ray_cluster):
    """Catches: a worker whose vLLM engine died ending the run (not recognised through Ray's task error), and any
    other task error (one every worker would hit) restarting workers over and over instead of failing the run."""
    import ray

    from actors.rollout_group import engine_died

    def raise_(dead: bool):
        class EngineDeadError(RuntimeError):  # named as vLLM's, defined here so the Ray worker can unpickle it
            pass

        raise (EngineDeadError if dead else ValueError)("boom")

    errors = []
    for dead in (True, False):
        with pytest.raises(ray.exceptions.RayTaskError) as caught:
            ray.get(ray.remote(raise_).remote(dead))
        errors.append(caught.value)
    assert engine_died(errors[0]) and not engine_died(errors[1])


def test_a_lost_learner_host_is_told_from_a_rank_that_died_on_its_own(ray_cluster, monkeypatch):
    """``LearnerGroup._unreachable`` on real Ray actors standing in for ranks; ``ray.nodes`` is made to declare one
    node dead 2 s late, as Ray's health checks do after a host crashed. Catches: a crashed host's rank read as a rank
    error because its actor's death is known before its node's (the host-fault test once saw rank 0's gloo error
    instead of LearnerLost), a rank that died on a live node (out of memory) reported as a lost host, and a rank
    that never answers left out."""
    import ray

    from cluster.learner_group import LearnerGroup
    from toy.faults import kill_for_good

    @ray.remote
    class Rank:
        def host(self):
            return "h", ray.get_runtime_context().get_node_id()

    @ray.remote
    class Silent:
        def host(self):
            time.sleep(60)

    node, crashed_node = ray.get_runtime_context().get_node_id(), "e" * 56
    ok, died, crashed, silent = Rank.remote(), Rank.remote(), Rank.remote(), Silent.remote()
    ray.get([ok.host.remote(), died.host.remote(), crashed.host.remote()])
    for dead in (died, crashed):
        kill_for_good(dead)  # dead before the pings (a ping right after ray.kill may still be answered)
    group = object.__new__(LearnerGroup)
    group.ranks = [ok, died, crashed]
    group.hosts = [("ok", node), ("died (10.0.0.2)", node), ("crashed (10.0.0.3)", crashed_node)]
    t0, real = time.monotonic(), ray.nodes
    monkeypatch.setattr(ray, "nodes", lambda: real() + [{"NodeID": crashed_node, "Alive": time.monotonic() < t0 + 2}])
    assert group._unreachable(wait_s=8, settle_s=4) == ["rank 2 on crashed (10.0.0.3)"]
    assert 4 < time.monotonic() - t0 < 20  # the dead rank on a live node was given settle_s
    group.ranks, group.hosts = [ok, silent], [("ok", node), ("silent (10.0.0.4)", node)]
    assert group._unreachable(wait_s=3, settle_s=2) == ["rank 1 on silent (10.0.0.4)"]
    for a in (ok, silent):
        ray.kill(a)
