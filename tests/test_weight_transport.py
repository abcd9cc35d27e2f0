"""The weight transport on its own: bucket plans, a real gloo channel between two processes, the timeout on a
missing peer, and the parameter-name rules."""

import multiprocessing as mp
import time

import psutil
import pytest
import torch

from actors.weight_names import check_names, to_transformers5
from actors.weight_group import BroadcastGroup, receive_relayed
from actors.weight_transport import (
    WeightPlan,
    WeightSender,
    WeightTransportError,
    join_channel,
    plan_buckets,
    receive_tensors,
)


def test_plan_buckets_by_dtype_and_size():
    named = {
        "a": torch.zeros(100, 100),
        "b": torch.zeros(10, dtype=torch.int64),
        "c": torch.zeros(300, 1000),
        "d": torch.zeros(5),
    }
    plan = plan_buckets(named.items(), version=3, bucket_mb=0.5)  # 0.5 MiB: c (1.2 MB) gets a bucket of its own
    assert plan.version == 3 and sorted(plan.names) == sorted(named)
    by_dtype = {}
    for b in plan.buckets:
        by_dtype.setdefault(b.dtype, []).append(b)
        assert b.numel == sum(e.numel for e in b.entries)
        assert [e.offset for e in b.entries] == [sum(x.numel for x in b.entries[:i]) for i in range(len(b.entries))]
    # a | c (over the limit with a, so it starts a bucket) | d (the bucket holding c is full)
    assert len(by_dtype["int64"]) == 1 and [[e.name for e in b.entries] for b in by_dtype["float32"]] == [
        ["a"],
        ["c"],
        ["d"],
    ]
    assert plan.nbytes == sum(t.numel() * t.element_size() for t in named.values())
    assert WeightPlan.from_dict(plan.to_dict()) == plan
    # an adapter's plan keeps its peft config through the RPC's plain types (lost: the receiver would reload the
    # adapter's tensors as model weights)
    adapter = plan_buckets(named.items(), version=4, adapter={"r": 8, "target_modules": ["q_proj"]})
    assert WeightPlan.from_dict(adapter.to_dict()).adapter == {"r": 8, "target_modules": ["q_proj"]}
    assert WeightPlan.from_dict(plan.to_dict()).adapter is None


def _receive(host, port, secret, plan_dict, queue):
    pg = join_channel(host, port, 20, secret=secret)
    got = {k: v.clone() for k, v in receive_tensors(pg, WeightPlan.from_dict(plan_dict))}
    queue.put({k: v.numpy() for k, v in got.items()})


def test_round_trip_between_processes():
    ctx = mp.get_context("spawn")
    named = {"w": torch.randn(64, 33), "i": torch.arange(7), "h": torch.randn(5, dtype=torch.float16)}
    plan = plan_buckets(named.items(), 1, bucket_mb=0.01)
    me = psutil.Process()

    def listening() -> set:
        return {c.laddr for c in me.net_connections("tcp") if c.status == psutil.CONN_LISTEN}

    before = listening()
    sender = WeightSender("127.0.0.1", timeout_s=20)
    host, port, secret = sender.listen("r0")
    queue = ctx.Queue()
    proc = ctx.Process(target=_receive, args=(host, port, secret, plan.to_dict(), queue))
    proc.start()
    sender.accept("r0")
    opened = listening() - before
    # the rendezvous and gloo's own sockets listen on the configured address only, never on every interface
    assert port in {a.port for a in opened} and {a.ip for a in opened} == {"127.0.0.1"}, opened
    assert sender.send(plan, named, ["r0"]) == {}
    got = queue.get(timeout=60)
    proc.join(timeout=30)
    for k, t in named.items():
        assert torch.equal(torch.from_numpy(got[k]), t), k


def _receive_or_fail(host, port, secret, plan_dict, timeout_s, queue):
    """A receiver that reports what it got, and the error that ended it (if any)."""
    got, error = [], None
    try:
        pg = join_channel(host, port, timeout_s, secret=secret)
        for name, _ in receive_tensors(pg, WeightPlan.from_dict(plan_dict)):
            got.append(name)
    except WeightTransportError as e:
        error = str(e)
    queue.put((got, error))


def test_a_foreign_joiner_gets_nothing_and_an_altered_bucket_is_refused():
    """A process that reaches the channel's port first, without the secret that only the real receiver got over
    Ray's RPC, never pairs with the sender: the real receiver gets every tensor, the stranger nothing (before the
    secret, the first joiner took the channel). Then a bucket that is not what the sender's digest says (here the
    plan's digest is altered, as a tampering relay would make the data differ) is refused before any of its
    tensors is handed on, with an error naming the bucket."""
    from actors.weight_transport import with_digests

    ctx = mp.get_context("spawn")
    named = {"w": torch.randn(64, 33), "i": torch.arange(7)}
    plan = with_digests(plan_buckets(named.items(), 1, bucket_mb=0.01), named)
    assert plan.digests and len(plan.digests) == len(plan.buckets)
    sender = WeightSender("127.0.0.1", timeout_s=20)
    host, port, secret = sender.listen("r0")
    stranger_q, real_q = ctx.Queue(), ctx.Queue()
    stranger = ctx.Process(target=_receive_or_fail, args=(host, port, "guessed", plan.to_dict(), 8, stranger_q))
    stranger.start()
    time.sleep(2)  # the stranger is at the rendezvous first
    real = ctx.Process(target=_receive_or_fail, args=(host, port, secret, plan.to_dict(), 20, real_q))
    real.start()
    sender.accept("r0")
    assert sender.send(plan, named, ["r0"]) == {}
    got, error = real_q.get(timeout=60)
    assert error is None and sorted(got) == sorted(named)
    got, error = stranger_q.get(timeout=60)
    assert got == [] and "could not join the weight channel" in error
    for p in (real, stranger):
        p.join(timeout=30)

    tampered = WeightPlan.from_dict(plan.to_dict())
    tampered.digests[0] = "0" * 64
    host, port, secret = sender.listen("r1")
    real = ctx.Process(target=_receive_or_fail, args=(host, port, secret, tampered.to_dict(), 20, real_q))
    real.start()
    sender.accept("r1")
    sender.send(plan, named, ["r1"])
    got, error = real_q.get(timeout=60)
    real.join(timeout=30)
    assert got == [] and f"weight bucket 1 of {len(plan.buckets)} (version 1) arrived altered" in error


def _receive_in_group(host, port, secret, rank, world, plan_dict, algorithm, queue):
    pg = join_channel(host, port, 20, rank=rank, world=world, secret=secret)
    plan = WeightPlan.from_dict(plan_dict)
    tensors = (
        receive_relayed(pg, plan, rank, world, chunk_mb=0.002) if algorithm == "relay" else receive_tensors(pg, plan)
    )
    got = {k: v.clone() for k, v in tensors}
    queue.put((rank, {k: v.numpy() for k, v in got.items()}))


@pytest.mark.parametrize("algorithm", ["relay", "collective"])
def test_broadcast_group_reaches_every_receiver_and_a_missing_one_fails_in_time(algorithm):
    """One group for all receivers (a relay down a chain of them, in chunks smaller than a bucket, or gloo's own
    broadcast): every receiver gets every tensor exactly; a group whose receiver never joins fails with an error
    after the timeout, never a hang."""
    ctx = mp.get_context("spawn")
    named = {"w": torch.randn(64, 33), "i": torch.arange(7), "h": torch.randn(5, dtype=torch.float16)}
    plan = plan_buckets(named.items(), 1, bucket_mb=0.01)
    group = BroadcastGroup("127.0.0.1", timeout_s=20, algorithm=algorithm, chunk_mb=0.002)
    host, port, secret = group.open(3)
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_receive_in_group, args=(host, port, secret, r, 4, plan.to_dict(), algorithm, queue))
        for r in (1, 2, 3)
    ]
    for p in procs:
        p.start()
    group.accept()
    group.send(plan, named)
    got = dict(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert sorted(got) == [1, 2, 3]
    for rank in got:
        for k, t in named.items():
            assert torch.equal(torch.from_numpy(got[rank][k]), t), (rank, k)
    short = BroadcastGroup("127.0.0.1", timeout_s=2)
    short.open(1)
    t0 = time.monotonic()
    with pytest.raises(WeightTransportError, match="broadcast group of 1 receiver.*not formed within 2 s"):
        short.accept()
    assert time.monotonic() - t0 < 10
    with pytest.raises(WeightTransportError, match="open/accept first"):
        short.send(plan, named)


def test_missing_peer_is_a_clear_error_not_a_hang():
    sender = WeightSender("127.0.0.1", timeout_s=2)
    sender.listen("ghost")
    t0 = time.monotonic()
    with pytest.raises(WeightTransportError, match=r"weight channel to 'ghost' not formed within 2 s"):
        sender.accept("ghost")
    assert time.monotonic() - t0 < 10
    with pytest.raises(WeightTransportError, match="listen\\(\\) was not called"):
        sender.accept("never-listened")


def test_joining_a_missing_sender_fails_in_time():
    from cluster.services import free_port

    t0 = time.monotonic()
    with pytest.raises(WeightTransportError, match=r"could not join the weight channel at 127.0.0.1:\d+ within 2 s"):
        join_channel("127.0.0.1", free_port(), 2)
    assert time.monotonic() - t0 < 10


def test_names_in_transformers5_form():
    assert to_transformers5("model.layers.0.mlp.up_proj.weight") == "model.language_model.layers.0.mlp.up_proj.weight"
    assert to_transformers5("visual.blocks.0.attn.qkv.weight") == "model.visual.blocks.0.attn.qkv.weight"
    assert to_transformers5("lm_head.weight") == "lm_head.weight"
    assert to_transformers5("model.language_model.norm.weight") == "model.language_model.norm.weight"
    check_names(["a", "b"], {"a", "b", "c"})
    with pytest.raises(ValueError, match=r"unknown parameter name 'x' \(and 1 more\)"):
        check_names(["a", "x", "y"], {"a"})


def test_an_adapter_plan_is_checked_by_the_weights_it_adapts():
    """Catches an adapter for modules the served model lacks (or a tensor that is not an adapter's) reaching the
    engine, where vLLM would fail at the next generation instead of at the sync."""
    from actors.weight_names import check_plan_names

    accepted = {"model.language_model.layers.0.self_attn.q_proj.weight", "lm_head.weight"}
    tensor = torch.zeros(2, 2)

    def plan(*names):
        return plan_buckets([(n, tensor) for n in names], version=1, adapter={"r": 2})

    ok = "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_{}.weight"
    check_plan_names(plan(ok.format("A"), ok.format("B")), accepted)
    with pytest.raises(ValueError, match="unknown parameter name 'model.language_model.layers.1"):
        check_plan_names(plan(ok.replace("layers.0", "layers.1").format("A")), accepted)
    with pytest.raises(ValueError, match="not a LoRA adapter tensor"):
        check_plan_names(plan("lm_head.weight"), accepted)
    check_plan_names(plan_buckets([("lm_head.weight", tensor)], version=1), accepted)  # weights: by their names


def test_checkpoint_names_of_the_tiny_model(tiny_model_dir):
    from actors.weight_names import accepted_names
    from transformers import Qwen2_5_VLForConditionalGeneration

    accepted = accepted_names(tiny_model_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir)
    check_names(list(model.state_dict()), accepted)  # what the learner will send is accepted as-is
