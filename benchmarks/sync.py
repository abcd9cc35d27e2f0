"""Weight sync vs the number of receivers (`python -m benchmarks sync`): today's per-worker channels (one
two-member gloo group per receiver, every bucket sent on each) next to one group holding every receiver, with
gloo's broadcast and with the relay (a pipelined chain), receivers that only receive (separate processes, no vLLM), on this machine. For each: the sender's wall time
per sync (median of rounds) and the bytes the sender process wrote to its sockets per sync (``/proc/self/io``
``wchar``: its write/writev calls, which gloo's transfers are).
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
from pathlib import Path

import torch

from actors.weight_group import BroadcastGroup, receive_relayed
from actors.weight_transport import WeightPlan, WeightSender, join_channel, plan_buckets, receive_tensors


def _written() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def _receiver(addresses, scheme: str, rank: int, world: int, plan_dict: dict, rounds: int, done) -> None:
    """Joins each round's channel (or group) and receives the plan; ``addresses`` is a queue of (host, port)."""
    plan = WeightPlan.from_dict(plan_dict)
    for _ in range(rounds):
        host, port = addresses.get(timeout=120)
        pg = join_channel(host, port, 60, rank=rank, world=world)
        tensors = receive_relayed(pg, plan, rank, world) if scheme == "relay" else receive_tensors(pg, plan)
        for _name, _t in tensors:
            pass
        done.put(rank)


def _run(scheme: str, receivers: int, named: dict, plan: WeightPlan, rounds: int) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    queues = [ctx.Queue() for _ in range(receivers)]
    done = ctx.Queue()
    grouped = scheme != "channels"
    world = receivers + 1 if grouped else 2
    procs = [ctx.Process(target=_receiver, args=(queues[i], scheme, i + 1 if grouped else 1, world, plan.to_dict(),
                                                  rounds, done)) for i in range(receivers)]
    for p in procs:
        p.start()
    times, written = [], []
    try:
        for _ in range(rounds):
            if grouped:
                group = BroadcastGroup("127.0.0.1", timeout_s=60, algorithm=scheme)
                address = group.open(receivers)
                for q in queues:
                    q.put(address)
                group.accept()
                w0, t0 = _written(), time.perf_counter()
                group.send(plan, named)
            else:
                sender = WeightSender("127.0.0.1", timeout_s=60)
                keys = [f"r{i}" for i in range(receivers)]
                for k, q in zip(keys, queues):
                    q.put(sender.listen(k))
                for k in keys:
                    sender.accept(k)
                w0, t0 = _written(), time.perf_counter()
                failed = sender.send(plan, named, keys)
                assert not failed, failed
            for _ in range(receivers):
                done.get(timeout=120)
            times.append(time.perf_counter() - t0)
            written.append(_written() - w0)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    return statistics.median(times), statistics.median(written)


def run_bench_sync(mb: float = 256, rounds: int = 3, receivers: tuple[int, ...] = (1, 2, 4)) -> int:
    n = int(mb * 2**20 / 4)
    named = {f"layer{i}.weight": torch.randn(n // 8) for i in range(8)}
    plan = plan_buckets(named.items(), 1, bucket_mb=64)
    nbytes = plan.nbytes
    print(f"\nWeight sync of {nbytes / 2**20:.0f} MiB (float32, 64 MiB buckets), gloo on loopback, receivers that only "
          f"receive; median of {rounds} rounds")
    print(f"{'receivers':>9s} {'scheme':>22s} {'seconds':>8s} {'sender bytes / model':>21s} {'vs 1 receiver':>14s}")
    schemes = {"per-worker channels": "channels", "group, gloo broadcast": "collective", "group, relay": "relay"}
    for scheme, key in schemes.items():
        base = None
        for r in receivers:
            seconds, written = _run(key, r, named, plan, rounds)
            base = base or seconds
            print(f"{r:9d} {scheme:>22s} {seconds:8.3f} {written / nbytes:21.2f} {seconds / base:14.2f}")
    return 0
