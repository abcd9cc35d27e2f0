"""The weight transport's devices, checked without a GPU: under FakeTensorMode tensors carry a device (cuda here)
and no data, and a recording stand-in for a process group sees every tensor either end hands the group. A real
nccl group takes CUDA tensors only, so each test fails if a CPU buffer would reach nccl (the bug that ended the
first GPU sync: a sender built with its default device="cpu")."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from actors.weight_receiver import WeightReceiver
from actors.weight_group import BroadcastGroup, receive_relayed
from actors.weight_transport import (
    Collective,
    WeightSender,
    WeightTransportError,
    plan_buckets,
    receive_tensors,
    transport_device,
)


class Done:
    def wait(self):
        return True


class RecordingGroup:
    """Stands in for ProcessGroupNCCL/Gloo: records (op, device) of every tensor; optionally fails posting."""

    def __init__(self, fail: str | None = None):
        self.seen, self.fail = [], fail

    def _op(self, name, tensors):
        if self.fail:
            raise RuntimeError(self.fail)
        self.seen += [(name, t.device) for t in tensors]
        return Done()

    def broadcast(self, tensors, opts):
        return self._op("broadcast", tensors)

    def send(self, tensors, dst, tag):
        return self._op("send", tensors)

    def recv(self, tensors, src, tag):
        return self._op("recv", tensors)


def snapshot():
    """The learner's published snapshot: CPU tensors, two buckets' worth at a 0.01 MiB bucket, one dtype each."""
    named = {"a": torch.randn(40, 40), "b": torch.randn(3000), "c": torch.ones(8, dtype=torch.bfloat16)}
    return named, plan_buckets(named.items(), 2, bucket_mb=0.01)


def test_where_buffers_live_per_backend():
    assert transport_device("gloo", "cuda:1") == torch.device("cpu")  # gloo moves CPU tensors, even on a GPU node
    assert transport_device("nccl", "cuda:1") == torch.device("cuda", 1)  # a TP rank's own GPU, not cuda:0
    assert transport_device("nccl", torch.device("cuda", 0)) == torch.device("cuda", 0)
    with pytest.raises(WeightTransportError, match="nccl needs a CUDA device"):
        transport_device("nccl", "cpu")
    # the impossible pair fails where the sender is built (learner start-up), never at the first sync
    with pytest.raises(WeightTransportError, match="nccl needs a CUDA device"):
        WeightSender("127.0.0.1", backend="nccl")
    with pytest.raises(WeightTransportError, match="nccl needs a CUDA device"):
        BroadcastGroup("127.0.0.1", backend="nccl", device="cpu")


def test_collective_refuses_a_tensor_its_backend_cannot_move():
    rec = RecordingGroup()
    with FakeTensorMode(allow_non_fake_inputs=True):
        with pytest.raises(WeightTransportError, match="cpu tensor reached the nccl"):
            Collective(rec, "nccl").broadcast(torch.empty(4))
        with pytest.raises(WeightTransportError, match="cuda:0 tensor reached the gloo"):
            Collective(rec, "gloo").send(torch.empty(4, device="cuda:0"), 1)
    assert rec.seen == []  # refused before the group saw it


def test_nccl_sender_puts_every_bucket_on_its_gpu():
    named, plan = snapshot()
    rec = RecordingGroup()
    with FakeTensorMode(allow_non_fake_inputs=True):
        sender = WeightSender("127.0.0.1", backend="nccl", device="cuda:0")  # the learner rank's engine.device
        sender._groups["w0"] = Collective(rec, "nccl")
        assert sender.send(plan, named, ["w0"]) == {}
    assert len(rec.seen) == len(plan.buckets) and all(d == torch.device("cuda", 0) for _, d in rec.seen)


def test_a_failed_send_is_an_outcome_not_an_exception():
    named, plan = snapshot()
    with FakeTensorMode(allow_non_fake_inputs=True):
        sender = WeightSender("127.0.0.1", backend="nccl", device="cuda:0")
        sender._groups["bad"] = Collective(RecordingGroup(fail="NCCL error: unhandled system error"), "nccl")
        ok = RecordingGroup()
        sender._groups["ok"] = Collective(ok, "nccl")
        failed = sender.send(plan, named, ["bad", "ok"])
        assert set(failed) == {"bad"} and "NCCL error" in failed["bad"]
        assert not sender.has_channel("bad") and sender.has_channel("ok")  # closed: it rejoins at the next sync
        assert len(ok.seen) == len(plan.buckets)  # the healthy worker got everything
        # the sender's own buffers on the wrong device (what the CPU default did): every receiver fails, no raise
        sender.device = torch.device("cpu")
        cpu_rec = RecordingGroup()
        sender._groups["ok"] = Collective(cpu_rec, "nccl")
        failed = sender.send(plan, named, ["ok"])
        assert "cpu tensor reached the nccl" in failed["ok"] and cpu_rec.seen == []
        # the group scheme: a failed send is a WeightTransportError the sync turns into an outcome
        group = BroadcastGroup("127.0.0.1", backend="nccl", device="cuda:0", algorithm="collective")
        group._pg = Collective(RecordingGroup(fail="NCCL timeout"), "nccl")
        with pytest.raises(WeightTransportError, match="NCCL timeout"):
            group.send(plan, named)
        assert group._pg is None


@pytest.mark.parametrize("algorithm", ["collective", "relay"])
def test_nccl_group_both_ends_on_gpus(algorithm):
    named, plan = snapshot()
    sent, mid, last = RecordingGroup(), RecordingGroup(), RecordingGroup()
    with FakeTensorMode(allow_non_fake_inputs=True):
        group = BroadcastGroup("127.0.0.1", backend="nccl", device="cuda:0", algorithm=algorithm)
        group._pg = Collective(sent, "nccl")
        group.send(plan, named)
        # receivers: group rank 1 forwards to rank 2 in a relay; rank 2 is the second TP rank of a worker (cuda:1)
        receive = (
            (lambda pg, dev, rank: receive_relayed(pg, plan, rank, 3, dev, chunk_mb=0.004))
            if algorithm == "relay"
            else (lambda pg, dev, rank: receive_tensors(pg, plan, dev))
        )
        got1 = dict(receive(Collective(mid, "nccl"), transport_device("nccl", "cuda:0"), 1))
        got2 = dict(receive(Collective(last, "nccl"), transport_device("nccl", "cuda:1"), 2))
    assert sorted(got1) == sorted(got2) == sorted(named)
    assert {t.device for t in got1.values()} == {torch.device("cuda", 0)}
    assert {t.device for t in got2.values()} == {torch.device("cuda", 1)}
    for rec, dev in ((sent, 0), (mid, 0), (last, 1)):
        assert rec.seen and all(d == torch.device("cuda", dev) for _, d in rec.seen), rec.seen
    if algorithm == "relay":
        assert {op for op, _ in mid.seen} == {"recv", "send"} and {op for op, _ in last.seen} == {"recv"}


def test_vllm_worker_receives_on_its_own_device():
    """Inside vLLM the receiver is mixed into the worker: its buffers go to the worker's device on nccl (each
    tensor-parallel rank its own GPU), the CPU on gloo."""

    class Worker(WeightReceiver):
        def __init__(self, device):
            self.device = torch.device(device)

    w = Worker("cuda:1")
    w._videop2r_backend = "nccl"
    assert w._videop2r_buffers() == torch.device("cuda", 1)
    w._videop2r_backend = "gloo"
    assert w._videop2r_buffers() == torch.device("cpu")
    cpu = Worker("cpu")
    with pytest.raises(WeightTransportError, match="nccl needs a CUDA device"):
        cpu.videop2r_join("127.0.0.1", 1, 1.0, backend="nccl")  # refused before it tries to join


def test_the_learners_weight_source_sends_from_the_learners_device():
    """cluster.learner_group builds rank 0's source with ``for_process(transport, engine.device)``."""
    from types import SimpleNamespace

    from actors.weight_sync import LocalWeightSource

    nccl = SimpleNamespace(host="127.0.0.1", timeout_s=5, backend="nccl", bucket_mb=8, verifies=False)
    src = LocalWeightSource.for_process(nccl, torch.device("cuda", 0))
    assert src.sender.device == torch.device("cuda", 0) and src.bucket_mb == 8
    with pytest.raises(WeightTransportError, match="nccl needs a CUDA device"):
        LocalWeightSource.for_process(nccl, torch.device("cpu"))
    gloo = SimpleNamespace(host="127.0.0.1", timeout_s=5, backend="gloo", bucket_mb=8, verifies=True)
    assert LocalWeightSource.for_process(gloo, torch.device("cuda", 0)).sender.device == torch.device("cpu")
    from tests.conftest import ROOT

    assert "for_process(transport, self.learner.engine.device)" in (ROOT / "cluster" / "learner_group.py").read_text()
    # bucket digests: on by default with gloo, off with nccl (hashing would copy every bucket off the GPU)
    from cluster.config import TransportSection

    assert TransportSection(backend="gloo").verifies and not TransportSection(backend="nccl").verifies
    assert TransportSection(backend="nccl", verify_buckets=True).verifies
    assert LocalWeightSource.for_process(gloo, torch.device("cpu")).verify
