"""Weight sync vs the number of receivers (`python -m benchmarks sync`): today's per-worker channels (one
two-member gloo group per receiver, every bucket sent on each) next to one group holding every receiver, with
gloo's broadcast and with the relay (a pipelined chain), receivers that only receive (separate processes, no vLLM), on this machine. For each: the sender's wall time
per sync (median of rounds) and the bytes the sender process wrote to its sockets per sync (``/proc/self/io``
``wchar``: its write/writev calls, which gloo's transfers are).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from actors.weight_group import BroadcastGroup, receive_relayed
from actors.weight_transport import WeightPlan, WeightSender, join_channel, plan_buckets, receive_tensors


def _written() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


@dataclass
class Placement:
    """Where the processes of a sync run: the Python interpreter that starts the sender and each receiver (None:
    this machine's; a harness host's from ``toy.hosts.Cluster.python_on`` puts the process on that host), and the
    address the sender listens on."""

    sender_ip: str = "127.0.0.1"
    sender_python: str | None = None
    receiver_python: list[str | None] | None = None  # one per receiver; None: each where the sender is

    def of_receiver(self, i: int) -> str | None:
        return self.receiver_python[i] if self.receiver_python else self.sender_python


def _netns() -> str:
    """The network namespace this process is in, as the kernel names it: which host it runs on."""
    return os.readlink("/proc/thread-self/ns/net")


def _receiver(addresses, scheme: str, rank: int, world: int, plan_dict: dict, rounds: int, done) -> None:
    """Joins each round's channel (or group) and receives the plan; ``addresses`` is a queue of (host, port,
    secret)."""
    plan = WeightPlan.from_dict(plan_dict)
    for _ in range(rounds):
        host, port, secret = addresses.get(timeout=120)
        pg = join_channel(host, port, 60, rank=rank, world=world, secret=secret)
        tensors = receive_relayed(pg, plan, rank, world) if scheme == "relay" else receive_tensors(pg, plan)
        for _name, _t in tensors:
            pass
        done.put(_netns())


def _sender(ip: str, scheme: str, queues, done, mb: float, rounds: int, results) -> None:
    """Each round: opens the channels (or the group), sends the model, waits for every receiver; puts (seconds,
    bytes written, the number of network namespaces the processes were in) per round."""
    named, plan = _model(mb)
    for _ in range(rounds):
        if scheme != "channels":
            group = BroadcastGroup(ip, timeout_s=60, algorithm=scheme)
            address = group.open(len(queues))
            for q in queues:
                q.put(address)
            group.accept()
            w0, t0 = _written(), time.perf_counter()
            group.send(plan, named)
        else:
            sender = WeightSender(ip, timeout_s=60)
            keys = [f"r{i}" for i in range(len(queues))]
            for k, q in zip(keys, queues):
                q.put(sender.listen(k))
            for k in keys:
                sender.accept(k)
            w0, t0 = _written(), time.perf_counter()
            failed = sender.send(plan, named, keys)
            assert not failed, failed
        spaces = {_netns()} | {done.get(timeout=120) for _ in queues}
        results.put((time.perf_counter() - t0, _written() - w0, len(spaces)))


def _model(mb: float, fill: bool = True) -> tuple[dict, WeightPlan]:
    """``mb`` MiB of float32 in 8 tensors and its plan (64 MiB buckets); ``fill=False``: the plan alone."""
    n = int(mb * 2**20 / 4) // 8
    named = {f"layer{i}.weight": torch.randn(n) if fill else torch.empty(n) for i in range(8)}
    return named, plan_buckets(named.items(), 1, bucket_mb=64)


def _run(
    scheme: str, receivers: int, mb: float, rounds: int, where: Placement | None = None
) -> tuple[float, float, int]:
    """The median seconds and sender bytes per sync of ``mb`` MiB to ``receivers`` processes, each process where
    ``where`` puts it (default: all on this machine's loopback), and how many hosts (network namespaces) they were
    on: the proof that the placement took effect."""
    where = where or Placement()
    ctx = mp.get_context("spawn")
    queues = [ctx.Queue() for _ in range(receivers)]
    done, results = ctx.Queue(), ctx.Queue()
    grouped = scheme != "channels"
    world = receivers + 1 if grouped else 2
    plan = _model(mb, fill=False)[1]
    procs = [
        ctx.Process(
            target=_receiver, args=(queues[i], scheme, i + 1 if grouped else 1, world, plan.to_dict(), rounds, done)
        )
        for i in range(receivers)
    ]
    procs.append(ctx.Process(target=_sender, args=(where.sender_ip, scheme, queues, done, mb, rounds, results)))
    pythons = [where.of_receiver(i) for i in range(receivers)] + [where.sender_python]
    for p, python in zip(procs, pythons):
        ctx.set_executable(python or sys.executable)  # read when the process starts
        p.start()
    ctx.set_executable(sys.executable)
    try:
        got = []
        while len(got) < rounds:
            try:
                got.append(results.get(timeout=1))
            except queue.Empty:
                failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if failed or not procs[-1].is_alive():
                    raise RuntimeError(
                        f"{scheme} sync to {receivers} receiver(s): a process exited ({failed})"
                    ) from None
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    return statistics.median(g[0] for g in got), statistics.median(g[1] for g in got), max(g[2] for g in got)


def run_bench_sync(mb: float = 256, rounds: int = 3, receivers: tuple[int, ...] = (1, 2, 4)) -> int:
    nbytes = _model(mb, fill=False)[1].nbytes
    print(
        f"\nWeight sync of {nbytes / 2**20:.0f} MiB (float32, 64 MiB buckets), gloo on loopback, receivers that only "
        f"receive; median of {rounds} rounds"
    )
    print(f"{'receivers':>9s} {'scheme':>22s} {'seconds':>8s} {'sender bytes / model':>21s} {'vs 1 receiver':>14s}")
    schemes = {"per-worker channels": "channels", "group, gloo broadcast": "collective", "group, relay": "relay"}
    for scheme, key in schemes.items():
        base = None
        for r in receivers:
            seconds, written, _ = _run(key, r, mb, rounds)
            base = base or seconds
            print(f"{r:9d} {scheme:>22s} {seconds:8.3f} {written / nbytes:21.2f} {seconds / base:14.2f}")
    return 0
