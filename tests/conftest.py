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


@pytest.fixture(scope="module")
def cot_items(synthetic_dir, test_config):
    """Eight CoT rows of the synthetic set, loaded with their media (the learner tests' batch)."""
    from videoqa.loader import MediaLoader
    from videoqa.schema import load_samples

    samples = load_samples(synthetic_dir / "cot.json")[:8]
    return list(MediaLoader(synthetic_dir, test_config.video.sampling())(samples))


@pytest.fixture(scope="session")
def vllm_engine(tiny_model_dir, test_config):
    """The session's vLLM engine of the tiny Qwen2.5-VL (about 20 s to start on 2 cores), with the rollout
    workers' weight receiver (a test that syncs weights into it puts the original ones back)."""
    from actors.engine import start_engine, stop_engine
    from actors.rollout_worker import RECEIVER

    llm = start_engine(test_config.rollout, str(tiny_model_dir), "float32", seed=0, worker_extension_cls=RECEIVER)
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
    ray.init(
        address="local",
        num_cpus=8,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
    )
    yield ray
    ray.shutdown()


# -- the training tests' shared run: the demo config on tiny budgets, its data, and an SFT model that knows the format
B, G = 4, 3


def overrides(out, model, data, *extra):
    return [
        f"run.out_dir={out}",
        f"model.path={model}",
        f"data.dir={data}",
        "rollout.group_size=3",
        "rollout.max_tokens=48",
        f"trainer.prompts_per_step={B}",
        "trainer.checkpoint_every=2",
        "trainer.steps=4",
        "trainer.max_staleness=0",
        "learner.micro_batch_size=12",
        "cache.retry_after_s=0.5",
        "sft.steps=120",
        "sft.batch_size=8",
        "data.loader_workers=1",
        "rollout.chunks_per_worker=1",
        "rollout.num_cpus=1",
        "learner.num_cpus=1",
        *extra,
    ]


def config(*args):
    from cluster.config import Config
    from cluster.config_loader import load_config

    return load_config(Config, ROOT / "configs" / "demo.yaml", overrides(*args))


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    from toy.synthetic import make_synthetic

    d = tmp_path_factory.mktemp("demo-data")
    make_synthetic(d, n=40, seed=0, n_eval=10, frames=8, size=56, style="demo", progress=False)
    return d


@pytest.fixture(scope="session")
def sft_model(ray_cluster, tiny_model_dir, demo_data, tmp_path_factory):
    from cluster.run_dir import RunDir
    from commands.stages import run_sft

    out = tmp_path_factory.mktemp("sft")
    summary = run_sft(config(out, tiny_model_dir, demo_data))
    rows = RunDir(out).metrics()
    assert summary["steps"] == 120 and rows[-1]["loss"] < rows[0]["loss"] - 2  # it learns the CoT format
    assert (out / "hf" / "config.json").is_file()
    return out / "hf"


# the multi-host harness (network namespaces, needs root): brought up once, for the tests that ask for it
from tests.hosts_harness import hosts, shared  # noqa: E402,F401


# The test files that take longest in scripts/test.sh's second phase (measured on 2 workers, 2026-11-28), longest
# first. With pytest-xdist workers that take whole files (--dist loadfile: a file's module fixtures are made once)
# in collection order, the long files start first and the short ones fill in at the end (longest-processing-time
# scheduling) instead of one long file running alone at the end. Unlisted files follow.
LONGEST_FIRST = (
    "test_rollout_group.py",
    "test_benchmark_tables.py",
    "test_training.py",
    "test_cli.py",
    "test_data_pipeline.py",
    "test_benchmarks.py",
    "test_reward_pool.py",
    "test_lora.py",
)


def pytest_collection_modifyitems(config, items):
    # In one process the files run in name order, the order CI has passed in. The one CI run in longest-first order
    # (2026-11-27) had test_multihost.py over its 900 s (260-400 s here) and the files after it 2-3x slower than
    # here; the same order passed here twice, so the cause is not known. Order only pays with several workers.
    if not config.getoption("numprocesses", None):
        return
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order


# Wall time per test file and the machine's load when it ended, printed after every run: a suite that got slower
# (in CI, where only the end of the output is kept) shows where, and whether the machine was busy with more than it.
_FILE_TIMES: dict[str, list[float]] = {}


def pytest_runtest_logreport(report):
    t = _FILE_TIMES.setdefault(report.nodeid.split("::")[0], [0.0, 0.0])
    t[0] += report.duration
    t[1] = os.getloadavg()[0]


@pytest.hookimpl(trylast=True)  # after the slowest tests, so that it stays in a kept tail
def pytest_terminal_summary(terminalreporter):
    rows = sorted(_FILE_TIMES.items(), key=lambda kv: -kv[1][0])[:12]
    if rows:
        terminalreporter.write_sep("-", "slowest test files: seconds (load average when each ended, 2 cores)")
        for name, (secs, load) in rows:
            terminalreporter.write_line(f"{secs:8.1f} s  (load {load:4.1f})  {name}")
