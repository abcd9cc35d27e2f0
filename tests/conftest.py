"""Session-wide real parts: one tiny Qwen2.5-VL, one synthetic dataset, one vLLM engine for the whole run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cluster.services import RedisServer

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from toy.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    from toy.synthetic import make_synthetic

    d = tmp_path_factory.mktemp("synthetic")
    make_synthetic(d, n=30, seed=0, n_eval=10, progress=False)
    return d


@pytest.fixture(scope="session")
def test_config():
    """The demo's config with small sizes, as tests use it."""
    from cluster.config import Config
    from cluster.config_loader import load_config

    return load_config(
        Config, ROOT / "configs" / "demo.yaml", ["rollout.group_size=3", "rollout.max_tokens=24", "rollout.seed=0"]
    )


@pytest.fixture(scope="session")
def vllm_engine(tiny_model_dir, test_config):
    """The session's only in-process vLLM engine (about 20 s to start on 2 cores)."""
    from actors.engine import start_engine, stop_engine

    llm = start_engine(test_config.rollout, str(tiny_model_dir), "float32", seed=0)
    yield llm
    stop_engine(llm)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the session (logical CPUs above the 2 real ones, so several actors fit)."""
    import ray

    from cluster.services import ORPHAN_REAPING

    os.environ.update(ORPHAN_REAPING)  # a SIGKILLed rollout worker's vLLM engine processes go with it
    # address="local": a private cluster, even if another one (e.g. the ray-job test's) runs on this machine
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    ray.shutdown()
