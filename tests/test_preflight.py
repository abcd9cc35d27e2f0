"""The checks made before Ray starts (cluster/preflight.py): each refuses its mistake with one line that names the
key and the fix, and lets a good setup through."""

import json
import shutil
import socket
import time

import pytest

from cluster.config_loader import ConfigError
from cluster.preflight import (
    check_before_start,
    check_data_files,
    check_output,
    check_policy_model,
    check_port,
    check_text_model,
)
from tests.conftest import config, overrides
from tests.test_cli import run


@pytest.fixture
def model_copy(tmp_path, tiny_model_dir):
    return shutil.copytree(tiny_model_dir, tmp_path / "m")


def refused(check, *args) -> str:
    with pytest.raises(ConfigError) as e:
        check(*args)
    line = str(e.value)
    assert "\n" not in line
    return line


def test_a_good_model_folder_passes(tiny_model_dir):
    """Catches a check that refuses the models this system writes itself (the tiny model, `sft`'s hf/)."""
    check_policy_model(str(tiny_model_dir))


def test_model_folder_mistakes_are_named(tmp_path, model_copy):
    """Each mistake a user makes with model.path, refused by name. Catches: a check that only looks for config.json
    (every case after the first two passes it), a family check that accepts any model_type, a weights check that
    is satisfied by a shard index whose shards are missing."""
    m = str(model_copy)
    assert "does not exist" in refused(check_policy_model, str(tmp_path / "nope"))
    (tmp_path / "f").write_text("x")
    assert "is a file" in refused(check_policy_model, str(tmp_path / "f"))
    cfg = json.loads((model_copy / "config.json").read_text())

    (model_copy / "config.json").write_text("{not json")
    assert "cannot be read as JSON" in refused(check_policy_model, m)
    (model_copy / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    line = refused(check_policy_model, m)
    assert "is a llama checkpoint" in line and "Qwen2.5-VL (model_type qwen2_5_vl)" in line
    (model_copy / "config.json").write_text(json.dumps(cfg))
    check_policy_model(m)

    (model_copy / "model.safetensors").rename(model_copy / "model-00001-of-00002.safetensors")
    (model_copy / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})
    )
    line = refused(check_policy_model, m)
    assert "lacks 1 of the 2 weight shards" in line and "model-00002-of-00002.safetensors" in line
    (model_copy / "model.safetensors.index.json").unlink()
    (model_copy / "model-00001-of-00002.safetensors").rename(model_copy / "pytorch_model.bin")
    assert "has no weights (*.safetensors): it holds pytorch_model.bin" in refused(check_policy_model, m)
    (model_copy / "pytorch_model.bin").rename(model_copy / "model.safetensors")

    (model_copy / "processor_config.json").rename(model_copy / "elsewhere.json")
    assert "has no video/image processor" in refused(check_policy_model, m)
    (model_copy / "elsewhere.json").rename(model_copy / "preprocessor_config.json")  # transformers 4's name
    check_policy_model(m)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (model_copy / f).unlink()
    assert "has no tokenizer" in refused(check_policy_model, m)


def test_text_models_hub_ids_and_local_folders(tmp_path, tiny_model_dir):
    """A hub id is left to the hub; a local judge folder without a config, or a tokenizer folder without tokenizer
    files, is refused. Catches: hub ids treated as missing folders (every hosted judge refused)."""
    check_text_model("Qwen/Qwen2.5-7B-Instruct", "judge.model")
    check_text_model(str(tiny_model_dir), "judge.model")
    check_text_model(str(tiny_model_dir), "reward.tokenizer")
    (tmp_path / "j").mkdir()
    assert "judge.model" in refused(check_text_model, str(tmp_path / "j"), "judge.model")
    assert "has no tokenizer" in refused(check_text_model, str(tmp_path / "j"), "reward.tokenizer")


def test_outputs_data_and_ports(tmp_path):
    """Catches: an output path that is a file let through (the run dies in mkdir), a folder that cannot be
    written let through, a missing data file found only after Ray started, a port in use found only when the
    exporter binds it (after the engines started), a port the exporter can bind refused (TIME_WAIT)."""
    check_output(str(tmp_path / "new" / "deeper"), "run.out_dir")
    (tmp_path / "file").write_text("mine")
    assert "is a file, not a folder" in refused(check_output, str(tmp_path / "file"), "run.out_dir")
    assert "cannot be made" in refused(check_output, str(tmp_path / "file" / "sub"), "run.out_dir")
    (tmp_path / "ro").mkdir(mode=0o500)
    import os

    if os.geteuid() != 0:  # root writes anywhere
        assert "cannot be written" in refused(check_output, str(tmp_path / "ro" / "x"), "run.out_dir")

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.json").write_text("[]")
    check_data_files(str(tmp_path / "d"), [("data.train_file", "train.json")])
    assert "data.dir" in refused(check_data_files, str(tmp_path / "nodata"), [])
    line = refused(check_data_files, str(tmp_path / "d"), [("data.cot_file", "cot.json")])
    assert line.startswith("data.cot_file=cot.json:") and "not found" in line

    check_port("127.0.0.1", 0, "metrics.port")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert f"metrics.port={port} on 127.0.0.1" in refused(check_port, "127.0.0.1", port, "metrics.port")
    check_port("127.0.0.1", port, "metrics.port")  # free again
    # a server gone while its connection lingers in TIME_WAIT (a run resumed at once after its predecessor died,
    # with Prometheus scraping it) is free to the exporter, which binds with SO_REUSEADDR: the check agrees
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    conn.close()  # the server's end closes first: it is the one left in TIME_WAIT
    client.close()
    server.close()
    check_port("127.0.0.1", port, "metrics.port")


def test_each_command_checks_what_it_reads(tmp_path, tiny_model_dir, synthetic_dir):
    """Catches a command that skips a check it needs: sft reads the CoT file, train the training file and the
    metrics port, eval writes eval.out_dir (not run.out_dir)."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.json").write_text("[]")
    base = (tmp_path / "r", tiny_model_dir, tmp_path / "d")
    check_before_start(config(*base), "train")
    assert "data.cot_file" in refused(check_before_start, config(*base), "sft")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = config(*base, f"metrics.port={s.getsockname()[1]}")
        assert "metrics.port" in refused(check_before_start, busy, "train")
    (tmp_path / "r").write_text("a file")
    check_before_start(config(*base), "eval")  # eval writes eval.out_dir
    assert "run.out_dir" in refused(check_before_start, config(*base), "train")
    line = refused(check_before_start, config(*base, f"eval.out_dir={tmp_path / 'r'}"), "eval")
    assert line.startswith("eval.out_dir")
    # a mistyped data.media_roots entry (every row under it would count as missing media), for the commands that
    # read media and whose other inputs this folder has (sft's CoT file it lacks)
    base = (tmp_path / "r2", *base[1:])
    for command in ("train", "eval", "make-cot"):
        line = refused(check_before_start, config(*base, f"data.media_roots=[{tmp_path / 'nope'}]"), command)
        assert line.startswith(f"data.media_roots lists {tmp_path / 'nope'}, which does not exist"), line
    check_before_start(config(*base, f"data.media_roots=[{tmp_path / 'd'}]"), "train")


def test_the_commands_refuse_before_ray_starts(tmp_path, model_copy, synthetic_dir):
    """`videop2r sft` and `train` with a model folder that is not a Qwen-VL checkpoint: one line, exit 2, in
    seconds (Ray and an engine starting first take tens of seconds and end in a traceback), nothing written."""
    cfg = json.loads((model_copy / "config.json").read_text())
    (model_copy / "config.json").write_text(json.dumps({**cfg, "model_type": "qwen2"}))
    for command in ("sft", "train"):
        t0 = time.perf_counter()
        r = run(command, *overrides(tmp_path / "r", model_copy, synthetic_dir))
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-2000:]
        assert "is a qwen2 checkpoint" in r.stderr and time.perf_counter() - t0 < 30
    assert not (tmp_path / "r").exists()


def test_redis_in_clear_to_another_host_is_refused_unless_allowed(monkeypatch):
    """Catches a Redis password (and the verdicts) sent in clear across the network without anyone saying so: a
    redis:// URL to another host (from cache.url or, as the driver resolves it, from cache.url_env) and the run's
    own start_local server on a cluster of several nodes are refused with one line naming rediss:// and
    cache.allow_insecure, the password redacted; rediss://, a local Redis and an explicit allowance pass."""
    from cluster.config import CacheSection
    from cluster.preflight import check_cache_transport, check_local_redis_across_hosts

    monkeypatch.delenv("VIDEOP2R_REDIS_URL", raising=False)
    with pytest.raises(
        ConfigError,
        match=r"cache.url redis://:\*\*\*@10.1.2.3:6379/0 reaches Redis on another host "
        r"without TLS.*rediss://.*cache.allow_insecure=true",
    ) as e:
        check_cache_transport(CacheSection(url="redis://:s3cret@10.1.2.3:6379/0"))
    assert "s3cret" not in str(e.value) and "\n" not in str(e.value)
    for ok in (
        CacheSection(url="rediss://:s3cret@10.1.2.3:6380/0"),
        CacheSection(url="redis://127.0.0.1:6379/0"),
        CacheSection(url="redis://10.1.2.3:6379/0", allow_insecure=True),
    ):
        check_cache_transport(ok)
    monkeypatch.setenv("VIDEOP2R_REDIS_URL", "redis://cache.example:6379/0")  # the driver's environment wins
    with pytest.raises(ConfigError, match="cache.example"):
        check_cache_transport(CacheSection(url="redis://127.0.0.1:6379/0"))
    check_local_redis_across_hosts(CacheSection(start_local=True), nodes=1)
    check_local_redis_across_hosts(CacheSection(start_local=True, allow_insecure=True), nodes=3)
    with pytest.raises(ConfigError, match="cache.start_local on a cluster of 3 nodes .*cache.allow_insecure=true"):
        check_local_redis_across_hosts(CacheSection(start_local=True), nodes=3)
