"""deploy/submit.sh: what it refuses before anything is uploaded (a secret on the command line, an upload too
large, outputs that would vanish with the job's copy) and how secrets reach the job (a private file, read once),
with no cluster needed (a stand-in `ray` records what it is given; test_multihost.py submits for real)."""

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


def _fake_ray(tmp_path):
    """A `ray` that records the runtime env it is given (the file is deleted when submit.sh exits)."""
    fake = tmp_path / "ray"
    fake.write_text(
        '#!/usr/bin/env bash\nwhile [ $# -gt 0 ]; do [ "$1" = --runtime-env ] && cp "$2" "$RECORD"; shift; done\n'
    )
    fake.chmod(0o755)
    return {"RAY": str(fake), "RECORD": str(tmp_path / "renv.json")}


def test_secrets_reach_the_job_in_a_private_file_not_its_runtime_env(tmp_path):
    """With --secrets-dir (by default for a head on this machine) the runtime env holds only the file's path; the
    file is the submitter's alone, and the job's command reads it once. Catches secrets left in the runtime env
    (Ray's job API shows it, its agent logs it), a file others can read, and a loader that leaves the file behind
    or takes one another user could have planted. Without a folder (a remote head) it warns."""
    import json
    import stat

    from cluster.config_loader import ConfigError
    from cluster.secrets_file import ENV, load_secrets_file

    secret = "s3cret-value-123"
    env = {**_fake_ray(tmp_path), "VIDEOP2R_JUDGE_API_KEY": secret, "TMPDIR": str(tmp_path)}
    r = _submit("--", "train", env=env)
    assert r.returncode == 0, r.stderr
    renv = json.loads((tmp_path / "renv.json").read_text())["env_vars"]
    assert secret not in json.dumps(renv) and "VIDEOP2R_JUDGE_API_KEY" not in renv
    path = renv[ENV]
    assert os.path.dirname(path) == str(tmp_path) and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    job_env = {ENV: path}
    assert load_secrets_file(job_env) == ["VIDEOP2R_JUDGE_API_KEY"]
    assert job_env == {"VIDEOP2R_JUDGE_API_KEY": secret} and not os.path.exists(path)
    with pytest.raises(ConfigError, match="read once"):
        load_secrets_file({ENV: path})
    planted = tmp_path / "planted.json"
    planted.write_text(json.dumps({"VIDEOP2R_JUDGE_API_KEY": "theirs"}))
    planted.chmod(0o644)
    with pytest.raises(ConfigError, match="nobody else can read"):
        load_secrets_file({ENV: str(planted)})
    assert planted.exists()

    remote = {**env, "RAY_ADDRESS": "http://10.0.0.5:8265"}
    r = _submit("--", "train", env=remote)
    renv = json.loads((tmp_path / "renv.json").read_text())["env_vars"]
    assert r.returncode == 0 and renv["VIDEOP2R_JUDGE_API_KEY"] == secret and ENV not in renv
    assert "travel in the job's runtime environment" in r.stderr and "--secrets-dir" in r.stderr
    shared = tmp_path / "shared"
    shared.mkdir()
    r = _submit("--secrets-dir", str(shared), "--", "train", env=remote)
    renv = json.loads((tmp_path / "renv.json").read_text())["env_vars"]
    assert r.returncode == 0 and secret not in json.dumps(renv) and renv[ENV].startswith(str(shared))
    r = _submit("--secrets-dir", "rel", "--", "train", env=remote)
    assert r.returncode == 2 and "--secrets-dir rel is not an absolute path" in r.stderr


def test_the_ray_token_sent_in_clear_to_a_remote_head_is_warned_about(tmp_path):
    """Ray's dashboard speaks plain http; the token submit.sh sends with every request is then readable on the
    network. Catches a warning that is missing, or shown for a head on this machine (where no network is crossed)."""
    env = {**_fake_ray(tmp_path), "RAY_AUTH_MODE": "token"}
    r = _submit("--", "train", env={**env, "RAY_ADDRESS": "http://10.0.0.5:8265"})
    assert r.returncode == 0 and "the Ray token goes to http://10.0.0.5:8265 in clear" in r.stderr
    for address in ("http://127.0.0.1:8265", "https://ray.example.org"):
        r = _submit("--", "train", env={**env, "RAY_ADDRESS": address})
        assert r.returncode == 0 and "in clear" not in r.stderr, address


def test_the_command_reads_the_secrets_file_first_and_refuses_a_missing_one(tmp_path, synthetic_dir):
    """The job's entrypoint (`python -m commands.cli`) takes the file before its command runs and says so by name;
    a file already read is a one-line error (exit 2), not a run without its secrets. Catches a CLI that never
    calls the loader (the secrets would silently be missing in the job)."""
    import json
    import sys

    f = tmp_path / "s.json"
    f.write_text(json.dumps({"X_TEST_SECRET": "v"}))
    f.chmod(0o600)
    cmd = [sys.executable, "-m", "commands.cli", "validate-data", "--no-media", str(synthetic_dir / "eval.json")]
    env = {**os.environ, "VIDEOP2R_SECRETS_FILE": str(f)}
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0 and "[secrets] X_TEST_SECRET read from the job's secrets file" in r.stderr, r.stderr
    assert not f.exists()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and "read once" in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
