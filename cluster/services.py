"""Local service processes the project starts for itself (tests, benchmarks, the single-box demo): a real
redis-server on a free loopback port. On a cluster, point ``cache.url`` at a managed Redis instead."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """redis-server on loopback, in its own folder, without persistence, behind a random password (other users of
    the machine reach loopback too); ``url`` carries the password, ``address`` is the same without it, for logs.
    ``stop()`` kills it and removes the folder when it made one. ``password`` restarts a server clients know."""

    def __init__(self, workdir: str | Path | None = None, port: int | None = None, start_timeout_s: float = 10.0,
                 password: str | None = None):
        import redis

        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server not found: run `make setup` (it installs the Debian package)")
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="videop2r-redis-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.password = password or secrets.token_hex(16)
        self.address = f"redis://127.0.0.1:{self.port}/0"
        self.url = f"redis://:{self.password}@127.0.0.1:{self.port}/0"
        # the password goes in through stdin's config, not argv (which `ps` shows to every user)
        self.proc = subprocess.Popen(
            ["redis-server", "-", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
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
QUIET_ENV = {"VLLM_LOGGING_LEVEL": "ERROR", "VLLM_CONFIGURE_LOGGING": "1", "TRANSFORMERS_VERBOSITY": "error",
             "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore",
             "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TORCH_CPP_LOG_LEVEL": "ERROR", "TORCH_LOGS": "-all",
             "VIDEOP2R_QUIET": "1"}


# A rollout worker's vLLM engine runs in child processes; when the worker dies (SIGKILL, Ray's OOM killer) they
# would outlive it (about 2.5 GB each on the tiny model). The raylet reaps the children of dead workers with this.
ORPHAN_REAPING = {"RAY_kill_child_processes_on_worker_exit_with_raylet_subreaper": "true"}


def keep_child_exit_codes() -> None:
    """With ORPHAN_REAPING set, Ray's core worker also sets SIGCHLD to SIG_IGN in the driver, where the kernel
    then reaps every child at once: `subprocess` reads exit code 0 for a command that failed. The raylet does the
    reaping the flag is for; the driver goes back to the default disposition (call after ``ray.init``)."""
    import signal

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def init_ray(verbose: bool = False, **local_kwargs) -> None:
    """Connects to the Ray cluster this process was started in (``ray job submit`` sets RAY_ADDRESS), or else
    starts a private local one with ``local_kwargs`` (never attaching to some other cluster on the machine)."""
    import logging
    import os

    import ray

    if ray.is_initialized():
        return
    env = {"TOKENIZERS_PARALLELISM": "false"} if verbose else dict(QUIET_ENV)
    common = {"log_to_driver": True, "configure_logging": True,
              "logging_level": logging.INFO if verbose else logging.WARNING}
    if os.environ.get("RAY_ADDRESS"):  # a submitted job: its runtime env (deploy/submit.sh) sets the variables
        ray.init(address="auto", **common)
    else:
        os.environ.update(ORPHAN_REAPING)
        if not verbose:  # Ray's notice that it chose token authentication (its secure default) for the cluster
            logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ray.init(address="local", include_dashboard=False, runtime_env={"env_vars": env}, **common, **local_kwargs)
        keep_child_exit_codes()
