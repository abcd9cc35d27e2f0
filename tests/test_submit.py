"""deploy/submit.sh: what it refuses before anything is uploaded (a secret on the command line, an upload too
large, outputs that would vanish with the job's copy), with no cluster needed."""

import os
import subprocess

import pytest

from tests.conftest import ROOT


def _submit(*args, env=None):
    return subprocess.run(
        [str(ROOT / "deploy" / "submit.sh"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RAY_ADDRESS": "http://127.0.0.1:9", **(env or {})},
    )


@pytest.mark.parametrize(
    "arg",
    [
        "judge.api_key=abc",
        "cache.url=redis://:pw@host:6379/0",
        "x.auth_token=1",
        "cache.url=redis://host:6379/0?password=pw",
        "cache.url=redis://:p@ss@host/0",
    ],
)
def test_submit_refuses_a_secret_on_the_command_line(arg):
    r = _submit("--", "train", arg)
    assert r.returncode == 2 and "would put a secret in the job's command line" in r.stderr
    assert r.stderr.count("\n") == 1


def test_submit_checks_the_upload_size_and_the_output_root():
    r = _submit("--max-upload-mb", "0.01", "--", "train", "rollout.max_tokens=8")  # not a secret
    assert r.returncode == 2 and "over --max-upload-mb 0.01" in r.stderr and "largest:" in r.stderr
    r = _submit("--out-root", "runs", "--", "train")
    assert r.returncode == 2 and "--out-root runs is relative" in r.stderr


def test_relative_outputs_are_anchored_or_refused_in_a_job(tmp_path):
    from cluster.config_paths import place_paths
    from cluster.config import Config
    from cluster.config_loader import ConfigError, load_config

    def cfg():
        return load_config(Config, ROOT / "configs" / "demo.yaml", ["data.dir=configs", f"model.path={model}"])

    model = f"runs/not-built-{os.getpid()}/tiny-model"  # not in the job's copy of the repository

    here = place_paths(cfg(), env={})  # outside a job paths stay where they are, made absolute for other hosts
    assert here.run.out_dir == os.path.abspath("runs/demo")
    with pytest.raises(ConfigError, match="run.out_dir=runs/demo is relative.*--out-root"):
        place_paths(cfg(), env={"RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"})
    placed = place_paths(cfg(), env={"RAY_JOB_CONFIG_JSON_ENV_VAR": "{}", "VIDEOP2R_OUT_ROOT": str(tmp_path)})
    assert placed.run.out_dir == str(tmp_path / "runs/demo") and placed.eval.out_dir == str(tmp_path / "runs/eval")
    # the demo's model, built inside its run folder, moves with it; an input shipped in the job's copy does not
    assert placed.model.path == str(tmp_path / model) and placed.data.dir == os.path.abspath("configs")
