"""Start-up checks for a run whose roles sit on several hosts (docs/multihost.md):

- services that other hosts connect to (the verdict cache, an HTTP judge, the weight transport's sender) must not
  be named by a loopback or wildcard address, which means a different machine on every host;
- ``run.out_dir`` and ``model.path`` must be the same storage on every host: learner ranks write their checkpoint
  shards and ``hf/`` where they run, rollout workers load the model where they run. The driver writes a marker into
  ``run.out_dir`` and a zero-CPU task on every node reads it back (and hashes ``model.path``'s config.json), so a
  host that does not see them is named before anything trains.

Both are checked before any role starts; a lone node skips them (its loopback is everyone's)."""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import socket
from pathlib import Path
from urllib.parse import urlparse

from actors.redaction import redact_url

MARKER = ".videop2r-storage-check"


def is_loopback(host: str | None) -> bool:
    """A name or address that means "this host" (or every interface of it) wherever it is read."""
    if host is None:
        return False
    host = host.strip("[]").lower()
    if host in ("localhost", "", "0.0.0.0", "::"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host.endswith(".localhost")
    return ip.is_loopback or ip.is_unspecified


def loopback_settings(cfg, cache_url: str | None) -> list[str]:
    """The settings that point other hosts at their own loopback. ``cache_url`` is the URL the driver resolved
    (``cache.url_env`` or ``cache.url``); a local Redis the run starts itself binds the node's address instead."""
    out = []
    if cfg.cache.enabled and not cfg.cache.start_local and cache_url and is_loopback(urlparse(cache_url).hostname):
        out.append(f"cache.url {redact_url(cache_url)} (use a Redis every node reaches, or cache.start_local=true)")
    if cfg.judge.backend == "http" and is_loopback(urlparse(cfg.judge.base_url).hostname):
        out.append(f"judge.base_url {cfg.judge.base_url} (serve the judge on an address every node reaches)")
    if cfg.transport.host is not None and is_loopback(cfg.transport.host):
        out.append(f"transport.host {cfg.transport.host} (leave it unset: each learner uses its node's address)")
    return out


def config_digest(model_path: str) -> str | None:
    """A hash of the model folder's config.json (None where it is missing)."""
    try:
        return hashlib.sha256((Path(model_path) / "config.json").read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def write_marker(out_dir: str) -> str:
    token = secrets.token_hex(8)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / MARKER).write_text(token)
    return token


def probe(expect: dict) -> dict:
    """Runs on one node: what of ``expect`` this host does not see the way the driver does."""
    missing = []
    marker = Path(expect["out_dir"]) / MARKER
    try:
        seen = marker.read_text()
    except OSError:
        seen = None
    if seen != expect["token"]:
        missing.append(f"run.out_dir {expect['out_dir']}")
    if config_digest(expect["model_path"]) != expect["model_digest"]:
        missing.append(f"model.path {expect['model_path']}")
    return {"host": socket.gethostname(), "missing": missing}


def check_storage(out_dir: str, model_path: str, timeout_s: float = 300) -> None:
    """Raises ``ConfigError`` naming every node that does not see ``out_dir`` and ``model_path`` as the driver
    does. Nothing to check on a lone node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from cluster.config_loader import ConfigError

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    token = write_marker(out_dir)
    expect = {"out_dir": out_dir, "token": token, "model_path": model_path, "model_digest": config_digest(model_path)}
    task = ray.remote(num_cpus=0, max_retries=0)(probe)
    refs = {
        n["NodeManagerAddress"]: task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(expect)
        for n in nodes
    }
    try:
        done = dict(zip(refs, ray.get(list(refs.values()), timeout=timeout_s)))
    except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError) as e:
        raise ConfigError(
            f"the shared-storage check did not finish on every node within {timeout_s:.0f} s "
            f"({type(e).__name__}): is every node up?"
        ) from None
    finally:
        (Path(out_dir) / MARKER).unlink(missing_ok=True)
    bad = [f"{r['host']} ({ip}) does not see {' and '.join(r['missing'])}" for ip, r in done.items() if r["missing"]]
    if bad:
        raise ConfigError(
            "; ".join(bad) + ": run.out_dir and model.path must be storage every node mounts at the same "
            "path (docs/multihost.md)"
        )


def alive_nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive"))


def check_reachable(cfg, cache_url: str | None) -> None:
    """Refuses loopback addresses for services other hosts reach, when the cluster has more than one node."""
    from cluster.config_loader import ConfigError

    problems = loopback_settings(cfg, cache_url)
    nodes = alive_nodes() if problems else 1
    if nodes > 1:
        raise ConfigError(
            f"this cluster has {nodes} nodes, and other hosts would reach their own loopback "
            f"through: {'; '.join(problems)}"
        )
