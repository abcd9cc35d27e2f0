"""Whatever a command started ends with it, however the command ends.

A command marks its environment with a token before it starts anything; every process it starts inherits the
mark (Ray's processes, the workers its raylet spawns, their vLLM engine processes, redis-server). A watcher in a
session of its own waits for the command's process to end, by any means (a normal exit, Ctrl-C, or a SIGKILL of
that one pid, as the OOM killer or a timeout sends, which no handler in the command can see), then sends SIGTERM to
every process still carrying the token, and SIGKILL to any left after a grace period.

Processes of a cluster the command only joined (``ray job submit``: RAY_ADDRESS) were started by that cluster's
raylet, not by the command, and never carry the token: Ray ends a job's actors itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

TOKEN_ENV = "VIDEOP2R_COMMAND_TOKENS"  # ':'-separated: a command started by a command carries both tokens


def marked(token: str, exclude: set[int] = frozenset()):
    """The processes whose environment (as they were started) carries ``token``."""
    import psutil

    found = []
    for p in psutil.process_iter():
        if p.pid in exclude:
            continue
        try:
            if token in p.environ().get(TOKEN_ENV, "").split(":"):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


def reap(token: str, grace_s: float = 5.0, rounds: int = 5) -> int:
    """SIGTERM to every marked process, SIGKILL to those alive after ``grace_s``; again for processes started in
    between. Returns how many were ended."""
    import psutil

    ended, me = 0, {os.getpid()}
    for _ in range(rounds):
        procs = marked(token, me)
        if not procs:
            break
        for p in procs:
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=grace_s)
        ended += len(procs)
    return ended


def watch(pid: int, created: float, token: str, poll_s: float = 0.5) -> None:
    """Waits until process ``pid`` (started at ``created``: a reused pid is not it) has ended, then reaps."""
    import psutil

    try:
        proc = psutil.Process(pid)
        while proc.is_running() and proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
            time.sleep(poll_s)
    except psutil.NoSuchProcess:
        pass
    reap(token)


def start_reaper() -> str:
    """In a command's own process, before it starts anything: marks the environment and starts the watcher.
    Returns the token."""
    import psutil

    token = uuid.uuid4().hex[:12]
    outer = os.environ.get(TOKEN_ENV, "")
    watcher_env = dict(os.environ)  # the watcher carries only the outer commands' tokens, never its own
    os.environ[TOKEN_ENV] = f"{outer}:{token}" if outer else token
    created = psutil.Process().create_time()
    subprocess.Popen(
        [sys.executable, "-m", "cluster.reaper", str(os.getpid()), repr(created), token],
        env=watcher_env,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    return token


if __name__ == "__main__":
    watch(int(sys.argv[1]), float(sys.argv[2]), sys.argv[3])
