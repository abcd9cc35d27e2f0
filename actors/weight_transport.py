"""Weight transport from the learner to the rollout workers, over torch.distributed: gloo on CPU, nccl on GPU.

Each receiver (one vLLM worker process) gets its own two-member group with the sender ("a channel"), so workers
can join, die and come back without disturbing the others. A sync sends the same buckets on every channel at
once. Tensors travel as flat per-dtype buckets of about ``bucket_mb``; the small plan (names, shapes, offsets)
travels beside them as an ordinary message (``collective_rpc``), because vLLM's RPC cannot carry tensors.

Setting a channel up waits at most ``timeout_s`` for the peer; a missing peer is a ``WeightTransportError`` naming
the channel, never a hang. Each channel (and each broadcast group) has a random secret that only its rendezvous
keys carry and that reaches the receivers through Ray's RPC, never the network the channel uses: a process that
reaches the port without it never pairs with the sender. Each bucket's sha256 travels in the plan (Ray's RPC too),
and a receiver checks a bucket before handing its tensors on: an altered bucket is refused, never loaded. NCCL channels (``backend="nccl"``) need GPUs (a GPU per process: one GPU cannot host
both ends) and have not run yet; on the CPU boxes the tests check, through ``Collective``, that every buffer either
end hands an nccl group is a CUDA tensor (fake ones, under FakeTensorMode), as a real nccl group requires.
"""

from __future__ import annotations

import datetime
import hashlib
import secrets
import socket
from dataclasses import dataclass, field
from collections.abc import Iterable, Iterator

import torch
import torch.distributed as dist


class WeightTransportError(RuntimeError):
    """A channel could not be formed or a transfer failed; the message names the channel and the likely fix."""


def transport_device(backend: str, local) -> torch.device:
    """Where a process's weight buffers live for ``backend``: gloo moves CPU tensors, nccl moves CUDA tensors only
    (a CPU tensor handed to an nccl collective raises, or hangs its peers). ``local``: the process's own device (the
    learner's ``engine.device``, a vLLM worker's ``self.device``; each tensor-parallel rank has its own)."""
    local = torch.device(local)
    if backend == "gloo":
        return torch.device("cpu")
    if backend == "nccl":
        if local.type != "cuda":
            raise WeightTransportError(
                f"transport.backend=nccl needs a CUDA device in every process it joins; this "
                f"one runs on {local}: use transport.backend=gloo on the CPU"
            )
        return local
    raise ValueError(f"unknown weight transport backend {backend!r} (gloo or nccl)")


class Collective:
    """A process group and the backend it was made with. Every tensor of the weight transport reaches the group
    through here, and a tensor on a device the backend cannot move is refused before the group sees it (so a CPU
    buffer never reaches nccl, whatever path built it; the CPU tests check this without initialising nccl)."""

    def __init__(self, pg, backend: str):
        self.pg, self.backend = pg, backend

    def _check(self, t: torch.Tensor) -> None:
        want = "cpu" if self.backend == "gloo" else "cuda"
        if t.device.type != want:
            raise WeightTransportError(
                f"a {t.device} tensor reached the {self.backend} weight transport, which moves {want} tensors only"
            )

    def broadcast(self, buf: torch.Tensor):
        self._check(buf)
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        return self.pg.broadcast([buf], opts)

    def send(self, buf: torch.Tensor, dst: int):
        self._check(buf)
        return self.pg.send([buf], dst, 0)

    def recv(self, buf: torch.Tensor, src: int):
        self._check(buf)
        return self.pg.recv([buf], src, 0)


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
    # a LoRA adapter's peft config (adapter_config.json) when the tensors are an adapter (learner.lora.sync=adapter)
    # rather than model weights: the receiver hands them to vLLM's LoRA support instead of reloading weights
    adapter: dict | None = None
    digests: list[str] | None = None  # each bucket's sha256 (``with_digests``); None: not checked

    @property
    def names(self) -> list[str]:
        return [e.name for b in self.buckets for e in b.entries]

    def to_dict(self) -> dict:
        """Plain types only: vLLM's RPC re-encodes arguments (msgpack), which turns dataclasses into dicts."""
        return {
            "version": self.version,
            "adapter": self.adapter,
            "digests": self.digests,
            "buckets": [
                {
                    "dtype": b.dtype,
                    "numel": b.numel,
                    "entries": [[e.name, list(e.shape), e.offset, e.numel] for e in b.entries],
                }
                for b in self.buckets
            ],
        }

    @classmethod
    def from_dict(cls, d: dict) -> WeightPlan:
        return cls(
            d["version"],
            [
                Bucket(
                    b["dtype"], b["numel"], [Entry(n, tuple(shape), off, num) for n, shape, off, num in b["entries"]]
                )
                for b in d["buckets"]
            ],
            d.get("adapter"),
            d.get("digests"),
        )

    @property
    def nbytes(self) -> int:
        return sum(b.numel * torch.empty((), dtype=getattr(torch, b.dtype)).element_size() for b in self.buckets)


def plan_buckets(
    named: Iterable[tuple[str, torch.Tensor]], version: int, bucket_mb: float = 64, adapter: dict | None = None
) -> WeightPlan:
    """Groups tensors into flat buckets of one dtype each, up to ``bucket_mb`` (a larger tensor gets its own).
    ``adapter``: the tensors are a LoRA adapter with this peft config (see ``WeightPlan.adapter``)."""
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
    return WeightPlan(version, buckets, adapter)


def bucket_digest(buf: torch.Tensor) -> str:
    """The sha256 of a flat bucket's bytes (a CUDA bucket is copied to the CPU for it)."""
    return hashlib.sha256(buf.detach().cpu().contiguous().view(torch.uint8).numpy()).hexdigest()


def with_digests(plan: WeightPlan, named: dict[str, torch.Tensor]) -> WeightPlan:
    """``plan`` with each bucket's digest, computed from the sender's snapshot one bucket at a time."""
    plan.digests = [bucket_digest(flatten(named, b, "cpu")) for b in plan.buckets]
    return plan


def check_bucket(plan: WeightPlan, i: int, buf: torch.Tensor) -> None:
    """Refuses bucket ``i`` when it is not what the sender's digest says (altered or corrupted on the way)."""
    if plan.digests is not None and bucket_digest(buf) != plan.digests[i]:
        raise WeightTransportError(
            f"weight bucket {i + 1} of {len(plan.buckets)} (version {plan.version}) arrived "
            "altered: its sha256 is not the sender's; it is not loaded, and this worker waits "
            "for the next sync"
        )


def new_secret() -> str:
    return secrets.token_hex(16)


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
        store = dist.TCPStore(
            host,
            port,
            world,
            True,
            datetime.timedelta(seconds=timeout_s),
            wait_for_workers=False,
            master_listen_fd=sock.fileno(),
            use_libuv=True,
        )
    except BaseException:
        sock.close()
        raise
    sock.detach()  # the store owns the descriptor now
    return store


def _group(store, rank: int, timeout_s: float, backend: str, address: str, size: int = 2, secret: str = ""):
    """The group (two members for a channel); gloo's own connections listen on ``address`` (not every interface).
    Its rendezvous keys carry ``secret``: a member without it never pairs with the others."""
    timeout = datetime.timedelta(seconds=timeout_s)
    prefixed = dist.PrefixStore(f"videop2r-weights/{secret}", store)
    if backend == "gloo":
        opts = dist.ProcessGroupGloo._Options()
        opts._timeout = timeout
        opts._devices = [dist.ProcessGroupGloo.create_device(hostname=address)]
        return Collective(dist.ProcessGroupGloo(prefixed, rank, size, opts), backend)
    if backend == "nccl":  # GPU only
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return Collective(dist.ProcessGroupNCCL(prefixed, rank, size, opts), backend)
    raise ValueError(f"unknown weight transport backend {backend!r} (gloo or nccl)")


def join_channel(
    host: str, port: int, timeout_s: float, backend: str = "gloo", rank: int = 1, world: int = 2, secret: str = ""
):
    """Receiver side: connect to the sender's channel (rank 1 of 2) or broadcast group (``rank`` of ``world``),
    with the ``secret`` the sender's ``listen`` / ``open`` returned."""
    try:
        store = dist.TCPStore(host, port, world, False, datetime.timedelta(seconds=timeout_s))
        return _group(store, rank, timeout_s, backend, route_address(host, port), world, secret)
    except (RuntimeError, dist.DistStoreError, OSError) as e:
        raise WeightTransportError(
            f"could not join the weight channel at {host}:{port} within {timeout_s:.0f} s ({str(e).splitlines()[0]}); "
            "check that the learner is up and the port is reachable from this node"
        ) from None


def flatten(named: dict[str, torch.Tensor], bucket: Bucket, device) -> torch.Tensor:
    """One bucket's tensors as one flat buffer on ``device`` (the learner's snapshot is on the CPU: on nccl each
    bucket is copied to the GPU here, one bucket at a time)."""
    return torch.cat([named[e.name].detach().reshape(-1).to(device) for e in bucket.entries])


def receive_tensors(pg: Collective, plan: WeightPlan, device="cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """Receiver side: yields (name, tensor) as each bucket arrives. The next bucket is already being received while
    the caller loads this one (two buckets in memory at most)."""

    def post(b: Bucket):
        buf = torch.empty(b.numel, dtype=getattr(torch, b.dtype), device=device)
        return buf, pg.broadcast(buf)

    pending = post(plan.buckets[0]) if plan.buckets else None
    for i, b in enumerate(plan.buckets):
        buf, work = pending
        work.wait()
        pending = post(plan.buckets[i + 1]) if i + 1 < len(plan.buckets) else None
        check_bucket(plan, i, buf)
        for e in b.entries:
            yield e.name, buf[e.offset : e.offset + e.numel].view(e.shape)


class WeightSender:
    """Sender side (rank 0 of every channel). Lives in the process that holds the weights."""

    def __init__(self, host: str | None = None, timeout_s: float = 60.0, backend: str = "gloo", device="cpu"):
        """``device``: the sender process's own device (the learner's); the buffers go where ``backend`` needs them,
        and an impossible pair (nccl without a GPU) fails here, at start-up, not at the first sync."""
        self.host = host or node_address()
        self.timeout_s, self.backend = timeout_s, backend
        self.device = transport_device(backend, device)
        self._stores: dict[str, dist.TCPStore] = {}
        self._secrets: dict[str, str] = {}
        self._groups: dict[str, object] = {}

    def listen(self, key: str) -> tuple[str, int, str]:
        """Opens a channel for receiver ``key``; returns the address it should join and the channel's secret (for
        the receiver alone: hand it over Ray's RPC). Then call ``accept``."""
        self.close(key)
        store = _listening_store(self.host, self.timeout_s)
        self._stores[key], self._secrets[key] = store, new_secret()
        return self.host, store.port, self._secrets[key]

    def accept(self, key: str) -> None:
        """Waits (at most ``timeout_s``) for receiver ``key`` to join the channel opened by ``listen``."""
        store = self._stores.get(key)
        if store is None:
            raise WeightTransportError(f"weight channel {key!r}: listen() was not called")
        try:
            self._groups[key] = _group(store, 0, self.timeout_s, self.backend, self.host, secret=self._secrets[key])
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
        self._secrets.pop(key, None)

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
                try:
                    flat = flatten(named, b, self.device)
                except Exception as e:  # noqa: BLE001 - the sender's own side (a missing tensor, device memory)
                    why = error_reason(e)
                    for k in keys:
                        failed.setdefault(k, why)
                else:
                    for k in keys:
                        if k not in failed:
                            try:
                                current.append((k, self._groups[k].broadcast(flat), flat))
                            except Exception as e:  # noqa: BLE001 - refused or failed to post: this channel only
                                failed[k] = error_reason(e)
            for k, w, _ in previous:
                try:
                    w.wait()
                except Exception as e:  # noqa: BLE001 - a transfer failed: this channel only
                    failed.setdefault(k, error_reason(e))
            previous = current
        for k in failed:
            self.close(k)  # the receiver's end of a dropped gloo pair errors out instead of waiting for its timeout
        return failed


def error_reason(e: BaseException) -> str:
    """An exception in one short line (type and first line of its message), for outcomes and logs."""
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200]}" if str(e) else type(e).__name__
