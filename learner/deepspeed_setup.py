"""Joining the DeepSpeed world and the DeepSpeed config of the learner (plumbing around ``learner.engine``)."""

from __future__ import annotations

import math
import os

import torch


def interface_of(ip: str) -> str | None:
    """The network interface that carries ``ip`` on this host (None if none does)."""
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address == ip for a in addrs):
            return name
    return None


def pin_interface(ip: str) -> None:
    """Makes gloo's and nccl's own connections use the interface of ``ip`` (the node's Ray address). Without it
    they advertise the address the hostname resolves to, which is loopback where /etc/hosts maps the hostname to
    127.0.1.1 (Debian's default): ranks on other hosts cannot connect and the world never forms. A variable the
    user set wins."""
    name = interface_of(ip)
    if name:
        for var in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
            os.environ.setdefault(var, name)


def init_distributed(backend: str) -> None:
    """Joins the DeepSpeed world described by RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT (set by the launcher,
    or by ``cluster.learner_group`` for learner ranks in Ray actors); a lone process makes a world of one."""
    import deepspeed
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if "RANK" not in os.environ:  # a single process, not started by a launcher
        # port 0: its store binds a port the kernel picks. A port probed free and bound later was taken in between
        # by another process on a busy host (seen: EADDRINUSE with two test sessions side by side)
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="0")
    _skip_shm_comm_op()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    # the world's store made here, so that rank 0's listens on MASTER_ADDR only: torch's env:// rendezvous binds
    # every interface; DeepSpeed then takes the initialised default group as it is
    store = _world_store(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), rank, world)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world)
    deepspeed.init_distributed(dist_backend=backend)


def _world_store(host: str, port: int, rank: int, world: int, timeout_s: float = 1800.0):
    """The default group's TCPStore: rank 0 serves it on ``host:port`` only (the socket reserved for it by
    ``reserve_store_port``, else one bound here; port 0 binds one the kernel picks, written back to MASTER_PORT);
    the other ranks connect to it."""
    import datetime

    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    if rank != 0:
        return dist.TCPStore(host, port, world, False, timeout)
    sock = _RESERVED.pop((host, port), None) or _listening_socket(host, port)
    try:
        if port == 0:
            port = sock.getsockname()[1]
            os.environ["MASTER_PORT"] = str(port)
        store = dist.TCPStore(
            host, port, world, True, timeout, wait_for_workers=False, master_listen_fd=sock.fileno(), use_libuv=True
        )
    except BaseException:
        sock.close()
        raise
    sock.detach()  # the store owns the descriptor now
    return store


# rank 0's store sockets bound and listening ahead of the world, by (host, port)
_RESERVED: dict = {}


def reserve_store_port(host: str) -> int:
    """Binds a port the kernel picks on ``host`` for rank 0's world store and holds it, listening, until
    ``init_distributed`` makes the store on it; returns the port, for the other ranks' MASTER_PORT. A port probed
    free and bound later can be taken in between by another process on a busy node (EADDRINUSE)."""
    sock = _listening_socket(host, 0)
    port = sock.getsockname()[1]
    _RESERVED[(host, port)] = sock
    return port


def _listening_socket(host: str, port: int):
    import socket

    family = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen()
    except BaseException:
        sock.close()
        raise
    return sock


def _skip_shm_comm_op() -> None:
    """Keeps DeepSpeed from JIT-compiling its CPU shared-memory comm op at start-up. Only ``inference_all_reduce``
    (tensor-parallel inference) uses it; training collectives go through torch.distributed either way. Building it
    at run time made every learner rank race for one build lock: a rank killed mid-build leaves the lock and the
    next start hangs, and a failed build makes the ranks waiting on it fail to import the module."""
    import deepspeed.ops
    from deepspeed.ops.op_builder.cpu.comm import ShareMemCommBuilder

    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def ds_config(cfg) -> dict:
    """The DeepSpeed config from a ``LearnerSection``."""
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        # the learner owns the boundary: an optimizer step accumulates as many micro-batches (of at most
        # micro_batch_size) as its batch needs, and step() is the boundary (DeepSpeed >= 0.19)
        "managed_gradient_accumulation": False,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": cfg.dtype == "bfloat16"},
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": cfg.lr,
                "betas": list(cfg.betas),
                "eps": 1e-8,
                "weight_decay": cfg.weight_decay,
                "torch_adam": True,
            },
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def lr_lambda(cfg):
    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "cosine":
            progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.total_steps - cfg.warmup_steps))
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return f


def collective_device(cfg, engine_device) -> torch.device:
    """Where a tensor for a collective of the learner's world lives: nccl moves only CUDA tensors, gloo only CPU
    ones."""
    return torch.device(engine_device) if cfg.backend == "nccl" else torch.device("cpu")


def most_on_any_rank(device, n: int) -> int:
    """The largest ``n`` of all learner ranks (a MAX all-reduce; ``n`` itself in a world of one)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return n
    t = torch.tensor([n], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())
