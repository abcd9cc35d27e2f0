"""Process and namespace helpers of the multi-host harness (toy/hosts.py): a free subnet, commands that must
succeed, and the PIDs of a host's namespaces (read from /proc and `ip netns`)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


def free_subnet() -> str:
    """A 10.x.0.0/24 that no interface of this machine uses."""
    taken = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    for third in range(87, 250):
        if f" 10.{third}.0." not in taken:
            return f"10.{third}.0"
    raise RuntimeError("no free 10.x.0.0/24 subnet")


def sh(argv: list[str]) -> None:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip() or r.returncode}")


def _nspid(pid: int) -> list[str]:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return line.split()[1:]
    except OSError:
        pass
    return []


def _pid_one(parent: int) -> int:
    """The child of ``parent`` (unshare) that is PID 1 of its new PID namespace."""
    try:
        kids = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    except OSError:
        return 0
    return next((int(k) for k in kids if _nspid(int(k))[-1:] == ["1"]), 0)


def _netns_pids(ns: str) -> list[int]:
    r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split()] if r.returncode == 0 else []


def _is_pid_one_of(pid: int, ns: str) -> bool:
    return _nspid(pid)[-1:] == ["1"] and pid in _netns_pids(ns)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
