"""Weight transport from the learner to the rollout workers, over torch.distributed: gloo on CPU, nccl on GPU.

Each receiver (one vLLM worker process) gets its own two-member group with the sender ("a channel"), so workers
can join, die and come back without disturbing the others. A sync sends the same buckets on every channel at
once. Tensors travel as flat per-dtype buckets of about ``bucket_mb``; the small plan (names, shapes, offsets)
travels beside them as an ordinary message (``collective_rpc``), because vLLM's RPC cannot carry tensors.

Setting a channel up waits at most ``timeout_s`` for the peer; a missing peer is a ``WeightTransportError`` naming
the channel, never a hang. NCCL channels (``backend="nccl"``) need GPUs and are not exercised on the CPU boxes.
"""

from __future__ import annotations

import datetime
import socket
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch
import torch.distributed as dist


class WeightTransportError(RuntimeError):
    """A channel could not be formed or a transfer failed; the message names the channel and the likely fix."""


@dataclass(frozen=True)
class Entry:
    name: str
    shape: tuple[int, ...]
    offset: int  # in elements, within the bucket
    numel: int


@dataclass
class Bucket:
    dtype: str  # e.g. "float32"
    numel: int = 0
    entries: list[Entry] = field(default_factory=list)


@dataclass
class WeightPlan:
    version: int
    buckets: list[Bucket]

    @property
    def names(self) -> list[str]:
        return [e.name for b in self.buckets for e in b.entries]

    def to_dict(self) -> dict:
        """Plain types only: vLLM's RPC re-encodes arguments (msgpack), which turns dataclasses into dicts."""
        return {"version": self.version, "buckets": [
            {"dtype": b.dtype, "numel": b.numel, "entries": [[e.name, list(e.shape), e.offset, e.numel] for e in b.entries]}
            for b in self.buckets
        ]}

    @classmethod
    def from_dict(cls, d: dict) -> "WeightPlan":
        return cls(d["version"], [
            Bucket(b["dtype"], b["numel"], [Entry(n, tuple(shape), off, num) for n, shape, off, num in b["entries"]])
            for b in d["buckets"]
        ])

    @property
    def nbytes(self) -> int:
        return sum(b.numel * torch.empty((), dtype=getattr(torch, b.dtype)).element_size() for b in self.buckets)


def plan_buckets(named: Iterable[tuple[str, torch.Tensor]], version: int, bucket_mb: float = 64) -> WeightPlan:
    """Groups tensors into flat buckets of one dtype each, up to ``bucket_mb`` (a larger tensor gets its own)."""
    limit = int(bucket_mb * 2**20)
    buckets: list[Bucket] = []
    open_by_dtype: dict[str, Bucket] = {}
    for name, t in named:
        dtype = str(t.dtype).removeprefix("torch.")
        b = open_by_dtype.get(dtype)
        size = t.numel() * t.element_size()
        if b is None or (b.numel * t.element_size() + size > limit and b.entries):
            b = Bucket(dtype)
            buckets.append(b)
            open_by_dtype[dtype] = b
        b.entries.append(Entry(name, tuple(t.shape), b.numel, t.numel()))
        b.numel += t.numel()
    return WeightPlan(version, buckets)


def node_address() -> str:
    """This node's address as other nodes see it (Ray's view when running under Ray)."""
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except ImportError:
        pass
    return socket.gethostbyname(socket.gethostname())


def route_address(host: str, port: int) -> str:
    """The local address this process reaches ``host`` from (no packet is sent: a UDP socket's route lookup)."""
    family = socket.getaddrinfo(host, port, proto=socket.IPPROTO_UDP)[0][0]
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        return s.getsockname()[0]


def _listening_store(host: str, timeout_s: float, world: int = 2) -> dist.TCPStore:
    """The channel's rendezvous, listening on ``host`` only: TCPStore alone binds every interface."""
    family = socket.getaddrinfo(host, 0, proto=socket.IPPROTO_TCP)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, 0))
        sock.listen()
        port = sock.getsockname()[1]
        store = dist.TCPStore(host, port, world, True, datetime.timedelta(seconds=timeout_s), wait_for_workers=False,
                              master_listen_fd=sock.fileno(), use_libuv=True)
    except BaseException:
        sock.close()
        raise
    sock.detach()  # the store owns the descriptor now
    return store


def _group(store, rank: int, timeout_s: float, backend: str, address: str, size: int = 2):
    """The group (two members for a channel); gloo's own connections listen on ``address`` (not every interface)."""
    timeout = datetime.timedelta(seconds=timeout_s)
    prefixed = dist.PrefixStore("videop2r-weights", store)
    if backend == "gloo":
        opts = dist.ProcessGroupGloo._Options()
        opts._timeout = timeout
        opts._devices = [dist.ProcessGroupGloo.create_device(hostname=address)]
        return dist.ProcessGroupGloo(prefixed, rank, size, opts)
    if backend == "nccl":  # GPU only
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(prefixed, rank, size, opts)
    raise ValueError(f"unknown weight transport backend {backend!r} (gloo or nccl)")


def join_channel(host: str, port: int, timeout_s: float, backend: str = "gloo", rank: int = 1, world: int = 2):
    """Receiver side: connect to the sender's channel (rank 1 of 2) or broadcast group (``rank`` of ``world``)."""
    try:
        store = dist.TCPStore(host, port, world, False, datetime.timedelta(seconds=timeout_s))
        return _group(store, rank, timeout_s, backend, route_address(host, port), world)
    except (RuntimeError, dist.DistStoreError, OSError) as e:
        raise WeightTransportError(
            f"could not join the weight channel at {host}:{port} within {timeout_s:.0f} s ({str(e).splitlines()[0]}); "
            "check that the learner is up and the port is reachable from this node"
        ) from None


def broadcast_bucket(pg, buf: torch.Tensor):
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    return pg.broadcast([buf], opts)


def receive_tensors(pg, plan: WeightPlan, device: str = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """Receiver side: yields (name, tensor) as each bucket arrives. The next bucket is already being received while
    the caller loads this one (two buckets in memory at most)."""

    def post(b: Bucket):
        buf = torch.empty(b.numel, dtype=getattr(torch, b.dtype), device=device)
        return buf, broadcast_bucket(pg, buf)

    pending = post(plan.buckets[0]) if plan.buckets else None
    for i, b in enumerate(plan.buckets):
        buf, work = pending
        work.wait()
        pending = post(plan.buckets[i + 1]) if i + 1 < len(plan.buckets) else None
        for e in b.entries:
            yield e.name, buf[e.offset : e.offset + e.numel].view(e.shape)


class WeightSender:
    """Sender side (rank 0 of every channel). Lives in the process that holds the weights."""

    def __init__(self, host: str | None = None, timeout_s: float = 60.0, backend: str = "gloo", device: str = "cpu"):
        self.host = host or node_address()
        self.timeout_s, self.backend, self.device = timeout_s, backend, device
        self._stores: dict[str, dist.TCPStore] = {}
        self._groups: dict[str, object] = {}

    def listen(self, key: str) -> tuple[str, int]:
        """Opens a channel for receiver ``key``; returns the address it should join. Then call ``accept``."""
        self.close(key)
        store = _listening_store(self.host, self.timeout_s)
        self._stores[key] = store
        return self.host, store.port

    def accept(self, key: str) -> None:
        """Waits (at most ``timeout_s``) for receiver ``key`` to join the channel opened by ``listen``."""
        store = self._stores.get(key)
        if store is None:
            raise WeightTransportError(f"weight channel {key!r}: listen() was not called")
        try:
            self._groups[key] = _group(store, 0, self.timeout_s, self.backend, self.host)
        except (RuntimeError, dist.DistStoreError) as e:
            self._stores.pop(key, None)
            raise WeightTransportError(
                f"weight channel to {key!r} not formed within {self.timeout_s:.0f} s: the receiver did not join "
                f"({str(e).splitlines()[0][:200]}); is the rollout worker alive and can it reach {self.host}?"
            ) from None

    def has_channel(self, key: str) -> bool:
        return key in self._groups

    def close(self, key: str) -> None:
        self._groups.pop(key, None)
        self._stores.pop(key, None)

    def send(self, plan: WeightPlan, named: dict[str, torch.Tensor], keys: list[str]) -> dict[str, str]:
        """Sends every bucket of ``plan`` on the channels of ``keys`` at once (async ops, then wait).

        Returns the receivers that failed (key -> reason); their channels are closed, the others got everything.
        """
        missing = [k for k in keys if k not in self._groups]
        if missing:
            raise WeightTransportError(f"no weight channel for {missing}: call listen/accept first")
        failed: dict[str, str] = {}
        previous: list = []  # bucket i+1 is queued while bucket i is on the wire (two flat copies at most)
        for b in plan.buckets + [None]:
            current = []
            if b is not None:
                flat = torch.cat([named[e.name].detach().reshape(-1).to(self.device) for e in b.entries])
                current = [(k, broadcast_bucket(self._groups[k], flat), flat) for k in keys if k not in failed]
            for k, w, _ in previous:
                try:
                    w.wait()
                except RuntimeError as e:
                    failed.setdefault(k, str(e).splitlines()[0][:200])
                    self.close(k)
            previous = current
        return failed


def _send_pipelined(pg, plan: WeightPlan, named: dict[str, torch.Tensor], device: str) -> None:
    """Every bucket broadcast from rank 0, bucket i+1 queued while bucket i is on the wire."""
    previous = None
    for b in plan.buckets + [None]:
        current = None
        if b is not None:
            flat = torch.cat([named[e.name].detach().reshape(-1).to(device) for e in b.entries])
            current = (broadcast_bucket(pg, flat), flat)
        if previous is not None:
            previous[0].wait()
        previous = current


CHAIN_CHUNK_MB = 4  # the relay's unit: receiver i forwards a chunk to i+1 as soon as it has it


def _pieces(buf: torch.Tensor, chunk_mb: float) -> list[torch.Tensor]:
    n = max(1, int(chunk_mb * 2**20 / buf.element_size()))
    return [buf[i:i + n] for i in range(0, buf.numel(), n)]


def _send_chain(pg, plan: WeightPlan, named: dict[str, torch.Tensor], device: str, chunk_mb: float) -> None:
    """Rank 0 of a relay: every chunk goes to rank 1 only (the sender writes the model once); bucket i+1 is
    queued while bucket i's chunks are still on the wire."""
    previous: list = []
    for b in plan.buckets + [None]:
        current = []
        if b is not None:
            flat = torch.cat([named[e.name].detach().reshape(-1).to(device) for e in b.entries])
            current = [pg.send([c], 1, 0) for c in _pieces(flat, chunk_mb)]
        for w in previous:
            w.wait()
        previous = current


def receive_relayed(pg, plan: WeightPlan, rank: int, world: int, device: str = "cpu",
                    chunk_mb: float = CHAIN_CHUNK_MB) -> Iterator[tuple[str, torch.Tensor]]:
    """Receiver ``rank`` of a relay: each chunk comes from ``rank - 1`` and is passed on to ``rank + 1`` at once
    (a pipelined chain, as NCCL's ring broadcast), then the bucket's tensors are yielded."""
    sends: list = []
    for b in plan.buckets:
        buf = torch.empty(b.numel, dtype=getattr(torch, b.dtype), device=device)
        for c in _pieces(buf, chunk_mb):
            pg.recv([c], rank - 1, 0).wait()
            if rank + 1 < world:
                sends.append(pg.send([c], rank + 1, 0))
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

    def __init__(self, host: str | None = None, timeout_s: float = 60.0, backend: str = "gloo", device: str = "cpu",
                 algorithm: str | None = None, chunk_mb: float = CHAIN_CHUNK_MB):
        self.host = host or node_address()
        self.timeout_s, self.backend, self.device, self.chunk_mb = timeout_s, backend, device, chunk_mb
        self.algorithm = algorithm or ("relay" if backend == "gloo" else "collective")
        if self.algorithm not in ("relay", "collective"):
            raise ValueError(f"unknown broadcast algorithm {self.algorithm!r} (relay or collective)")
        self._store = self._pg = None
        self.receivers = 0

    def open(self, receivers: int) -> tuple[str, int]:
        """A new group for ``receivers`` receivers; they join as ranks 1..receivers with ``join_channel``."""
        self.close()
        self.receivers = receivers
        self._store = _listening_store(self.host, self.timeout_s, world=receivers + 1)
        return self.host, self._store.port

    def accept(self) -> None:
        try:
            self._pg = _group(self._store, 0, self.timeout_s, self.backend, self.host, self.receivers + 1)
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
        except RuntimeError as e:
            self.close()
            raise WeightTransportError(f"weight broadcast failed ({str(e).splitlines()[0][:200]}); the group is "
                                       "closed: open a new one without the failed receiver") from None

    def close(self) -> None:
        self._pg = self._store = None
