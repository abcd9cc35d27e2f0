"""Local service processes the project starts for itself (tests, benchmarks, the demo, ``cache.start_local``): a real
redis-server on a free port, on loopback or on the node's address for the other hosts of a cluster. A long-lived
cluster can point ``cache.url`` at a managed Redis instead."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    """A port free on every interface of this host (a port free on loopback may be taken on the node's IP)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class RedisServer:
    """redis-server on ``host`` (loopback by default; a cluster's other hosts need the node's address, and this
    host's own clients keep loopback), in its own folder, without persistence, behind a random password (other
    users of the machine reach it too); ``url`` carries the password, ``address`` is the same without it, for logs.
    ``stop()`` kills it and removes the folder when it made one. ``password`` restarts a server clients know."""

    def __init__(
        self,
        workdir: str | Path | None = None,
        port: int | None = None,
        start_timeout_s: float = 10.0,
        password: str | None = None,
        host: str = "127.0.0.1",
    ):
        import redis

        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server not found: run `make setup` (it installs the Debian package)")
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="videop2r-redis-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.password = password or secrets.token_hex(16)
        self.host = host
        self.address = f"redis://{host}:{self.port}/0"
        self.url = f"redis://:{self.password}@{host}:{self.port}/0"
        binds = ["127.0.0.1"] + ([host] if host != "127.0.0.1" else [])
        # the password goes in through stdin's config, not argv (which `ps` shows to every user)
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "-",
                "--port",
                str(self.port),
                "--bind",
                *binds,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        self.proc.stdin.write(f"requirepass {self.password}\n".encode())
        self.proc.stdin.close()
        self.client = redis.Redis.from_url(self.url, socket_timeout=0.5)
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _die_with_parent() -> None:
    """In the child before exec: Linux sends it SIGTERM when the process that started it dies, however it died (a
    SIGKILLed driver would otherwise leave its redis-server running). Elsewhere a no-op. (Linux ties this to the
    starting thread: start the server from the main thread, as the Stack does.)"""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


# vLLM's, DeepSpeed's and transformers' INFO lines stay out of the actors' output unless --verbose: the console
# shows our progress and the warnings actors log (Redis down, a judge failing).
# TORCH_CPP_LOG_LEVEL: torch's C++ warnings (the CPU backend's NUMA binding line); TORCH_LOGS=-all: torch's Python
# loggers at ERROR ("No CUDA runtime is found" on CPU boxes); VIDEOP2R_QUIET: no weight-loading bar per engine.
QUIET_ENV = {
    "VLLM_LOGGING_LEVEL": "ERROR",
    "VLLM_CONFIGURE_LOGGING": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONWARNINGS": "ignore",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TORCH_CPP_LOG_LEVEL": "ERROR",
    "TORCH_LOGS": "-all",
    "VIDEOP2R_QUIET": "1",
}


# A rollout worker's vLLM engine runs in child processes; when the worker dies (SIGKILL, Ray's OOM killer) they
# would outlive it (about 2.5 GB each on the tiny model; on a GPU node they keep the GPU's memory and the restarted
# worker cannot load). With this set on every node, each worker runs in a process group of its own that the raylet
# kills when the worker dies. (Not Ray's older subreaper flag: with it every Ray worker, the job supervisor
# included, reads exit code 0 for a child that failed, so every `ray job submit` reported success.)
ORPHAN_REAPING = {"RAY_process_group_cleanup_enabled": "true"}


def init_ray(verbose: bool = False, **local_kwargs) -> None:
    """Connects to the Ray cluster this process was started in (``ray job submit`` sets RAY_ADDRESS), or else
    starts a private local one with ``local_kwargs`` (never attaching to some other cluster on the machine)."""
    import logging
    import os

    import ray

    if ray.is_initialized():
        return
    env = {"TOKENIZERS_PARALLELISM": "false"} if verbose else dict(QUIET_ENV)
    common = {
        "log_to_driver": True,
        "configure_logging": True,
        "logging_level": logging.INFO if verbose else logging.WARNING,
    }
    if os.environ.get("RAY_ADDRESS"):  # a submitted job: its runtime env (deploy/submit.sh) sets the variables
        ray.init(address="auto", **common)
    else:
        os.environ.update(ORPHAN_REAPING)
        if not verbose:  # Ray's notice that it chose token authentication (its secure default) for the cluster
            logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ray.init(address="local", include_dashboard=False, runtime_env={"env_vars": env}, **common, **local_kwargs)


def ray_error_line(e: BaseException) -> str | None:
    """One line for a Ray error that reached a command (an actor's exception, an actor or node lost): what failed,
    on which host, why. None for an error that is not Ray's."""
    import re

    try:
        from ray import exceptions as rx
    except ImportError:
        return None
    if isinstance(e, rx.RayTaskError):  # raised inside an actor or task: its own exception, where it ran
        cause = e.__dict__.get("cause") or e
        text = (str(cause).strip().splitlines() or [""])[0][:300]
        # what arrives is Ray's copy of the cause's class, whose attributes are the cause's: read the message
        plain = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
        where = re.search(r"ray::([\w.]+)\(\) \(pid=\d+, ip=([^,)]+)", plain)
        what, ip = where.groups() if where else ("a task", "its node")
        return f"{what} failed on {_host(ip)}: {type(cause).__name__}: {text}"
    if isinstance(e, rx.RayActorError):  # the actor's process or its node is gone
        msg = str(e)
        cls = re.search(r"class_name: (\S+)", msg)
        ip = re.search(r"\bip: (\S+)", msg)
        why = next(
            (line.strip() for line in msg.splitlines()[1:] if line.strip() and ":" not in line.split()[0]), "it exited"
        )
        return (
            f"a {cls.group(1) if cls else 'Ray'} actor died on {_host(ip.group(1)) if ip else 'its node'}: {why[:300]}"
        )
    if isinstance(e, rx.RayError):
        return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
    return None


def _host(ip: str) -> str:
    """``hostname (ip)`` from Ray's node table, or the address alone."""
    try:
        import ray

        for n in ray.nodes() if ray.is_initialized() else []:
            if n.get("NodeManagerAddress") == ip:
                return f"{n.get('NodeManagerHostname', '?')} ({ip})"
    except Exception:  # noqa: BLE001 - the name is a courtesy; the address is enough
        pass
    return ip
