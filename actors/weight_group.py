"""One weight group holding every receiver (``transport.scheme=group``): the sender's NIC carries the model once
whatever the number of receivers. Built on the channels' pieces in ``actors.weight_transport``."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist

from actors.weight_transport import (
    Collective,
    WeightPlan,
    WeightTransportError,
    _group,
    _listening_store,
    check_bucket,
    error_reason,
    flatten,
    new_secret,
    node_address,
    transport_device,
)


def _send_pipelined(pg: Collective, plan: WeightPlan, named: dict[str, torch.Tensor], device) -> None:
    """Every bucket broadcast from rank 0, bucket i+1 queued while bucket i is on the wire."""
    previous = None
    for b in plan.buckets + [None]:
        current = None
        if b is not None:
            flat = flatten(named, b, device)
            current = (pg.broadcast(flat), flat)
        if previous is not None:
            previous[0].wait()
        previous = current


CHAIN_CHUNK_MB = 4  # the relay's unit: receiver i forwards a chunk to i+1 as soon as it has it


def _pieces(buf: torch.Tensor, chunk_mb: float) -> list[torch.Tensor]:
    n = max(1, int(chunk_mb * 2**20 / buf.element_size()))
    return [buf[i : i + n] for i in range(0, buf.numel(), n)]


def _send_chain(pg: Collective, plan: WeightPlan, named: dict[str, torch.Tensor], device, chunk_mb: float) -> None:
    """Rank 0 of a relay: every chunk goes to rank 1 only (the sender writes the model once); bucket i+1 is
    queued while bucket i's chunks are still on the wire."""
    previous: list = []
    for b in plan.buckets + [None]:
        current = []
        if b is not None:
            flat = flatten(named, b, device)
            current = [pg.send(c, 1) for c in _pieces(flat, chunk_mb)]
        for w in previous:
            w.wait()
        previous = current


def receive_relayed(
    pg: Collective, plan: WeightPlan, rank: int, world: int, device="cpu", chunk_mb: float = CHAIN_CHUNK_MB
) -> Iterator[tuple[str, torch.Tensor]]:
    """Receiver ``rank`` of a relay: each chunk comes from ``rank - 1`` and is passed on to ``rank + 1`` at once
    (a pipelined chain, as NCCL's ring broadcast), then the bucket's tensors are yielded."""
    sends: list = []
    for i, b in enumerate(plan.buckets):
        buf = torch.empty(b.numel, dtype=getattr(torch, b.dtype), device=device)
        for c in _pieces(buf, chunk_mb):
            pg.recv(c, rank - 1).wait()
            if rank + 1 < world:
                sends.append(pg.send(c, rank + 1))
        check_bucket(plan, i, buf)  # a rank up the chain that altered it: refused here (each rank checks its own)
        for e in b.entries:
            yield e.name, buf[e.offset : e.offset + e.numel].view(e.shape)
    for w in sends:
        w.wait()


class BroadcastGroup:
    """Sender side of one group holding every receiver, so that the sender's NIC carries the model once whatever
    the number of receivers: ``algorithm="relay"`` (default on gloo) passes chunks down a pipelined chain of the
    receivers (``receive_relayed``); ``"collective"`` uses the backend's broadcast (on nccl a pipelined ring; on
    gloo a tree, whose root sends log2(N+1) copies: measured in ``python -m benchmarks sync``). Membership is
    fixed per group: open a new one when receivers come or go (at a step boundary). Every operation has the
    timeout; a receiver that fails fails the whole send (``WeightTransportError``), and in a relay stalls the ones
    after it until the timeout -- the per-worker ``WeightSender`` channels are the ones that isolate a dead worker,
    at N times the sender's bytes."""

    def __init__(
        self,
        host: str | None = None,
        timeout_s: float = 60.0,
        backend: str = "gloo",
        device="cpu",
        algorithm: str | None = None,
        chunk_mb: float = CHAIN_CHUNK_MB,
    ):
        self.host = host or node_address()
        self.timeout_s, self.backend, self.chunk_mb = timeout_s, backend, chunk_mb
        self.device = transport_device(backend, device)
        self.algorithm = algorithm or ("relay" if backend == "gloo" else "collective")
        if self.algorithm not in ("relay", "collective"):
            raise ValueError(f"unknown broadcast algorithm {self.algorithm!r} (relay or collective)")
        self._store = self._pg = None
        self._secret = ""
        self.receivers = 0

    def open(self, receivers: int) -> tuple[str, int, str]:
        """A new group for ``receivers`` receivers; they join as ranks 1..receivers with ``join_channel`` and the
        secret returned here (for the receivers alone: hand it over Ray's RPC)."""
        self.close()
        self.receivers = receivers
        self._store = _listening_store(self.host, self.timeout_s, world=receivers + 1)
        self._secret = new_secret()
        return self.host, self._store.port, self._secret

    def accept(self) -> None:
        try:
            self._pg = _group(self._store, 0, self.timeout_s, self.backend, self.host, self.receivers + 1, self._secret)
        except (RuntimeError, dist.DistStoreError) as e:
            self.close()
            raise WeightTransportError(
                f"weight broadcast group of {self.receivers} receiver(s) not formed within {self.timeout_s:.0f} s "
                f"({str(e).splitlines()[0][:200]}): a receiver did not join"
            ) from None

    def send(self, plan: WeightPlan, named: dict[str, torch.Tensor]) -> None:
        if self._pg is None:
            raise WeightTransportError("no weight broadcast group: call open/accept first")
        try:
            if self.algorithm == "relay":
                _send_chain(self._pg, plan, named, self.device, self.chunk_mb)
            else:
                _send_pipelined(self._pg, plan, named, self.device)
        except Exception as e:  # noqa: BLE001 - any failure (a transfer, the sender's own buffers) closes the group
            self.close()
            raise WeightTransportError(
                f"weight broadcast failed ({error_reason(e)}); the group is "
                "closed: open a new one without the failed receiver"
            ) from None

    def close(self) -> None:
        self._pg = self._store = None
