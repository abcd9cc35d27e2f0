"""Where a run's paths point once it runs: relative outputs under ``VIDEOP2R_OUT_ROOT`` in a Ray job, every path
made absolute where it was given (actors on other hosts open them)."""

from __future__ import annotations

import os
from pathlib import Path

from cluster.config_loader import ConfigError


def place_paths(cfg, env=os.environ):
    """Under `ray job submit` the command runs in Ray's temporary copy of the repository, where a relative output
    folder would land and vanish with it. With ``VIDEOP2R_OUT_ROOT`` (deploy/submit.sh --out-root) relative output
    folders go below it, and so do relative inputs that are not in the copy (the demo's model and data, built
    inside its run folder); in a job without it a relative output folder is an error."""
    root = env.get("VIDEOP2R_OUT_ROOT")
    in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in env  # set by Ray for a job's entrypoint
    for name, key, output in (
        ("run", "out_dir", True),
        ("eval", "out_dir", True),
        ("cot", "out_dir", True),
        ("model", "path", False),
        ("data", "dir", False),
    ):
        section = getattr(cfg, name)
        value = getattr(section, key)
        if not value or Path(value).is_absolute() or (not output and Path(value).exists()):
            continue
        if root:
            setattr(section, key, str(Path(root) / value))
        elif in_job and output:
            raise ConfigError(
                f"{name}.{key}={value} is relative, and this job runs in Ray's temporary copy of the "
                "repository: give deploy/submit.sh --out-root DIR (storage the head node writes) or an "
                f"absolute {name}.{key}"
            )
    return absolute_paths(cfg)


def absolute_paths(cfg):
    """Paths that actors on other hosts open, made absolute here, where they were given: an actor's working folder
    is not the driver's. Symlinks are kept as given (``os.path.abspath``, not ``resolve``): the link may be the
    path every host shares while its target is one host's mount. Model names that are not local folders (a hub id
    for the tokenizer or judge) stay as they are."""
    for section, key, always in (
        (cfg.run, "out_dir", True),
        (cfg.eval, "out_dir", True),
        (cfg.cot, "out_dir", True),
        (cfg.model, "path", True),
        (cfg.data, "dir", True),
        (cfg.reward, "tokenizer", False),
        (cfg.judge, "model", False),
    ):
        value = getattr(section, key)
        if section is cfg.judge and cfg.judge.backend != "vllm":  # an endpoint's model name, not a folder
            continue
        if value and (always or Path(value).exists()):
            setattr(section, key, os.path.abspath(value))
    cfg.data.media_roots = [os.path.abspath(p) for p in cfg.data.media_roots]
    return cfg
