import pytest

from cluster.config import Config
from cluster.config_loader import ConfigError, load_config, parse_overrides
from tests.conftest import ROOT

DEMO = ROOT / "configs" / "demo.yaml"


def test_every_shipped_config_loads():
    files = sorted((ROOT / "configs").glob("*.yaml"))
    assert files
    for f in files:
        load_config(Config, f)


def test_yaml_and_dotted_overrides():
    cfg = load_config(Config, DEMO, ["rollout.num_workers=4", "rollout.temperature=0.7", "video.nframes=null"])
    assert cfg.rollout.num_workers == 4
    assert cfg.rollout.temperature == 0.7
    assert cfg.video.nframes is None
    assert cfg.video.max_pixels == 3136  # from the YAML
    assert cfg.rollout.top_p == 1.0  # default


def test_unknown_key_names_the_key_and_suggests():
    with pytest.raises(ConfigError) as e:
        load_config(Config, DEMO, ["rollout.num_worker=4"])
    msg = str(e.value)
    assert "rollout.num_worker" in msg and "did you mean 'rollout.num_workers'" in msg
    assert "\n" not in msg


def test_unknown_key_in_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("rollout:\n  group_sise: 8\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'rollout.group_sise'.*rollout.group_size"):
        load_config(Config, f)


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"rollout.num_workers.*integer.*'many'"):
        load_config(Config, DEMO, ["rollout.num_workers=many"])
    with pytest.raises(ConfigError, match=r"rollout.group_size"):
        load_config(Config, DEMO, ["rollout.group_size=0"])
    with pytest.raises(ConfigError, match=r"rollout.device"):
        load_config(Config, DEMO, ["rollout.device=tpu"])


def test_cross_field_validation():
    with pytest.raises(ConfigError, match="num_gpus"):
        load_config(Config, None, ["rollout.device=cuda"])
    with pytest.raises(ConfigError, match="judge.model"):
        load_config(Config, None, ["judge.backend=http"])
    with pytest.raises(ConfigError, match="perception_length"):
        load_config(Config, None, ["reward.perception_length=[10, 5]"])
    cfg = load_config(Config, None, ["reward.perception_length=[10, 50]", "judge.engine.num_cpus=2"])
    assert cfg.reward.perception_length == (10, 50) and cfg.judge.engine.num_cpus == 2
    cfg = load_config(Config, None, ["rollout.device=cuda", "rollout.num_gpus=1"])
    assert cfg.rollout.device == "cuda"
    with pytest.raises(ConfigError, match="tensor_parallel_size=4 needs num_gpus >= 4"):  # a TP teacher or judge
        load_config(Config, None, ["rollout.device=cuda", "rollout.num_gpus=2", "rollout.tensor_parallel_size=4"])
    assert (
        load_config(
            Config, None, ["judge.engine.device=cuda", "judge.engine.num_gpus=4", "judge.engine.tensor_parallel_size=4"]
        ).judge.engine.tensor_parallel_size
        == 4
    )
    with pytest.raises(ConfigError, match="video.min_frames=20 is above video.max_frames=16"):
        load_config(Config, None, ["video.min_frames=20"])
    with pytest.raises(ConfigError, match="video.min_pixels"):
        load_config(Config, None, ["video.min_pixels=200000"])
    with pytest.raises(ConfigError, match="eval.max_tokens=4096 leaves no room"):
        load_config(Config, None, ["eval.max_tokens=4096"])
    assert load_config(Config, None, ["eval.max_tokens=4096", "rollout.max_model_len=16384"]).eval.max_tokens == 4096
    with pytest.raises(ConfigError, match="cot.temperature > 0"):
        load_config(Config, None, ["cot.samples=4"])
    assert load_config(Config, None, ["cot.samples=4", "cot.temperature=0.7"]).cot.samples == 4
    with pytest.raises(ConfigError, match="transport.backend=nccl needs GPUs on both ends"):
        load_config(Config, None, ["transport.backend=nccl", "learner.num_gpus=1", "learner.backend=nccl"])
    assert (
        load_config(
            Config, None, ["transport.backend=nccl", "learner.num_gpus=1", "rollout.device=cuda", "rollout.num_gpus=1"]
        ).transport.backend
        == "nccl"
    )
    # the demo's type weights: known problem types only (a typo would silently drop a type), some weight > 0
    with pytest.raises(ConfigError, match=r"demo.eval_mix=.*unknown: direction"):
        load_config(Config, None, ['demo.eval_mix={"direction": 1}'])
    with pytest.raises(ConfigError, match=r"demo.mix=.*at least one > 0"):
        load_config(Config, None, ['demo.mix={"OCR": 0}'])
    cfg = load_config(Config, None, ['demo.mix={"OCR": 2, "numerical": 0, "free-form": 1}'])
    assert cfg.demo.trained_types == ["OCR", "free-form"] and len(load_config(Config).demo.trained_types) == 5
    # a cross-field error caused by an override says so, not "the file is wrong"
    with pytest.raises(ConfigError, match=r"^.*demo.yaml with the command-line overrides: rollout.max_tokens"):
        load_config(Config, DEMO, ["rollout.max_tokens=4096"])


def test_booleans_are_not_numbers(tmp_path):
    # lax pydantic turns `true` into 1: G = 1 would silently give zero advantages
    with pytest.raises(ConfigError, match="command line: .*group_size must be a number, not true"):
        load_config(Config, DEMO, ["rollout.group_size=true"])
    with pytest.raises(ConfigError, match="max_rows must be a number, not false"):  # int | None too
        load_config(Config, None, ["eval.max_rows=false"])
    f = tmp_path / "c.yaml"
    f.write_text("learner:\n  lr: true\n")
    with pytest.raises(ConfigError, match=r"c.yaml: .*lr must be a number, not true"):
        load_config(Config, f)
    assert load_config(Config, None, ["cache.enabled=true", "rollout.temperature=1"]).rollout.temperature == 1.0


def test_bad_override_syntax_and_missing_file():
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_overrides(["rollout.num_workers"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(Config, ROOT / "configs" / "nope.yaml")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(Config, DEMO, ["rollout.device.x=1"])


def test_passwords_in_urls_are_redacted_when_shown_or_saved(tmp_path):
    from cluster.config_loader import dump_config, redact
    from cluster.run_dir import RunDir

    cfg = load_config(
        Config,
        DEMO,
        ["cache.url=redis://:s3cret@redis-master:6379/0", "judge.base_url=https://user:tok3n@judge.example/v1"],
    )
    shown = dump_config(cfg)
    assert "s3cret" not in shown and "tok3n" not in shown
    assert "redis://:***@redis-master:6379/0" in shown and "https://user:***@judge.example/v1" in shown
    cfg.run.out_dir = str(tmp_path / "run")
    RunDir(cfg.run.out_dir).prepare(cfg, resume=False, force=False)
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "s3cret" not in saved and "redis://:***@" in saved
    assert cfg.cache.url == "redis://:s3cret@redis-master:6379/0"  # the running config keeps it
    assert redact(["http://127.0.0.1:8000/v1", "redis://host:6379"]) == [
        "http://127.0.0.1:8000/v1",
        "redis://host:6379",
    ]


def test_one_url_redaction_covers_raw_at_signs_and_query_passwords():
    """actors.redaction.redact_url, which the config dump, the log lines (cache, control plane, judge) and the
    errors all use. Catches the holes the old pattern had: a raw "@" in a password leaked its tail (the match
    stopped at the first "@"), and ?password=... (which redis-py honours) passed untouched; a URL without secrets
    must come out unchanged, and a line holding several URLs must lose every secret."""
    from actors.redaction import redact_url
    from cluster.config_loader import dump_config

    assert redact_url("redis://user:p@ss@h:6379/0") == "redis://user:***@h:6379/0"
    assert redact_url("redis://h:6379/0?password=s3cret&db=1") == "redis://h:6379/0?password=***&db=1"
    assert redact_url("http://h/v1?api_key=zz#top") == "http://h/v1?api_key=***#top"
    assert redact_url("a redis://:x@y@h/0 b https://u:t@j/v1 c") == "a redis://:***@h/0 b https://u:***@j/v1 c"
    for plain in ("http://127.0.0.1:8000/v1", "redis://u@h:1/0", "redis://h:6379/0?db=2", "not a url: a@b"):
        assert redact_url(plain) == plain
    shown = dump_config(load_config(Config, DEMO, ["cache.url=redis://redis-master:6379/0?password=s3cret"]))
    assert "s3cret" not in shown and "?password=***" in shown


def test_errors_name_where_the_bad_value_came_from(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("rollout:\n  temperature: hot\n")
    with pytest.raises(ConfigError) as e:
        load_config(Config, f, ["trainer.stepz=3"])
    msg = str(e.value)
    assert f"{f}: config key 'rollout.temperature'" in msg  # from the file
    assert "command line: unknown config key 'trainer.stepz' (did you mean 'trainer.steps'?)" in msg
    with pytest.raises(ConfigError, match=r"^command line: config key 'rollout.top_p'"):
        load_config(Config, DEMO, ["rollout.top_p=2"])


def test_device_dependent_defaults_and_the_paper_config():
    cpu = load_config(Config, None, [])
    assert (cpu.learner.dtype, cpu.learner.backend, cpu.transport.backend) == ("float32", "gloo", "gloo")
    gpu = load_config(Config, None, ["learner.num_gpus=1", "rollout.device=cuda", "rollout.num_gpus=1"])
    assert (gpu.learner.dtype, gpu.learner.backend, gpu.transport.backend) == ("bfloat16", "nccl", "nccl")
    mixed = load_config(Config, None, ["learner.num_gpus=1"])  # CPU rollout workers: the transport stays gloo
    assert (mixed.learner.backend, mixed.transport.backend) == ("nccl", "gloo")
    assert load_config(Config, None, ["learner.num_gpus=1", "learner.dtype=float32"]).learner.dtype == "float32"
    paper = load_config(Config, ROOT / "configs" / "paper-7b-gpu.yaml")
    lr = paper.learner
    assert (lr.backend, lr.dtype, lr.zero_stage, lr.gradient_checkpointing, lr.num_ranks) == (
        "nccl",
        "bfloat16",
        3,
        True,
        4,
    )
    assert paper.transport.backend == "nccl" and paper.rollout.group_size == 8 and paper.trainer.steps == 1000


def test_the_engine_core_runs_in_the_actor_only_where_it_is_the_engines_process():
    """Catches: the engine core moved into a process that is not the engine's alone (a test session, a benchmark:
    vLLM's worker would set up torch.distributed's default group there), into the actor on CUDA (where vLLM's own
    process overlaps scheduling with the GPU), or with tensor-parallel ranks (processes of their own)."""
    from actors.vllm_inputs import engine_env, engine_in_process, engine_kwargs

    cpu = load_config(Config, None, []).rollout
    assert engine_in_process(cpu, in_actor=True) and not engine_in_process(cpu, in_actor=False)
    gpu = load_config(Config, None, ["rollout.device=cuda", "rollout.num_gpus=2"]).rollout
    assert not engine_in_process(gpu, in_actor=True)
    tp = load_config(Config, None, ["rollout.tensor_parallel_size=2"]).rollout
    assert not engine_in_process(tp, in_actor=True)
    forced = load_config(Config, None, ["rollout.engine_in_process=false"]).rollout
    assert not engine_in_process(forced, in_actor=True)
    assert engine_in_process(load_config(Config, None, ["rollout.engine_in_process=true"]).rollout, in_actor=False)
    with pytest.raises(ConfigError, match="engine_in_process=true needs tensor_parallel_size=1"):
        load_config(Config, None, ["rollout.engine_in_process=true", "rollout.tensor_parallel_size=2"])
    # what vLLM is told: no engine-core process, and the model in this process (no worker process)
    assert engine_env(cpu, True)["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert engine_env(cpu, False)["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    assert engine_kwargs(cpu, "m", in_process=True)["distributed_executor_backend"] == "uni"
    assert "distributed_executor_backend" not in engine_kwargs(cpu, "m", in_process=False)
