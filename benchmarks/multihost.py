"""Weight sync across hosts (`python -m benchmarks multihost`): the sync benchmark's sender and receivers
(``benchmarks/sync.py``: receivers that only receive, no vLLM) placed on hosts of the namespace harness
(``toy/hosts.py``): every receiver on a host of its own, reached over the harness's bridge, next to all of them on
the sender's host (its loopback). Per-worker channels vs one group (gloo's broadcast, the relay): the sender's wall
time per sync and the bytes its process wrote per model. Needs root (network namespaces); the hosts are up for the
run only.

What it shows on one machine is the transports' behaviour across separate network stacks (each host its own
address, a veth of MTU 1500 instead of loopback's 64 KiB), not a real network's bandwidth."""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks.sync import Placement, _model, _run

SCHEMES = {"per-worker channels": "channels", "group, gloo broadcast": "collective", "group, relay": "relay"}


def run_bench_multihost(mb: float = 64, rounds: int = 3, receivers: tuple[int, ...] = (1, 2, 4)) -> int:
    from toy.hosts import Cluster
    from toy.netns import free_subnet

    if os.geteuid() != 0:
        print(
            "error: the multihost benchmark needs root (it makes network namespaces); run it as root", file=sys.stderr
        )
        return 2
    state = Path(tempfile.mkdtemp(prefix="videop2r-bench-hosts-", dir="/var/tmp"))
    c = Cluster(state, prefix=f"vb{secrets.token_hex(2)}", subnet=free_subnet())
    if max(receivers) + 1 > len(c.hosts):
        print(f"error: at most {len(c.hosts) - 1} receivers (one host each, the sender on another)", file=sys.stderr)
        return 2
    c.hosts = c.hosts[: max(receivers) + 1]
    # c10d warns for each peer whose address has no name in a host's hosts file (the lookup fails at once there)
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    try:
        c.up()
        sender, others = c.hosts[1], [h for h in c.hosts if h is not c.hosts[1]]
        nbytes = _model(mb, fill=False)[1].nbytes
        print(
            f"\nWeight sync of {nbytes / 2**20:.0f} MiB (float32, 64 MiB buckets), gloo, receivers that only receive;"
            f" median of {rounds} rounds. One host: every process on {sender.name}'s loopback. Separate hosts: the "
            f"sender on {sender.name} ({sender.ip}), each receiver on a host of its own, over the harness's bridge"
        )
        print(
            f"{'receivers':>9s} {'scheme':>22s} {'hosts':>9s} {'one host s':>11s} {'separate s':>11s} "
            f"{'separate/one':>13s} {'sender bytes/model':>19s}"
        )
        for scheme, key in SCHEMES.items():
            for r in receivers:
                one_s, one_w, one_n = _run(key, r, mb, rounds, Placement("127.0.0.1", c.python_on(sender)))
                sep_s, sep_w, sep_n = _run(
                    key, r, mb, rounds, Placement(sender.ip, c.python_on(sender), [c.python_on(h) for h in others[:r]])
                )
                # hosts: the network namespaces the processes were in (one host, separate); bytes likewise
                print(
                    f"{r:9d} {scheme:>22s} {f'{one_n}, {sep_n}':>9s} {one_s:11.3f} {sep_s:11.3f} "
                    f"{sep_s / one_s:13.2f} {f'{one_w / nbytes:.2f}, {sep_w / nbytes:.2f}':>19s}"
                )
    finally:
        c.down()
        shutil.rmtree(state, ignore_errors=True)
    return 0
