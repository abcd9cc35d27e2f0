"""The capacity model's arithmetic (benchmarks/capacity.py): the properties it must have, and the paper's run."""

from dataclasses import replace

from benchmarks.capacity import (
    GPUS,
    MODELS,
    Layout,
    Workload,
    learner_memory,
    paper_layout,
    rollout_memory,
    step_times,
    sync_seconds,
)
from tests.test_benchmarks import run


def test_the_paper_run_is_reproduced_to_its_order():
    layout, workload = paper_layout()
    hours = step_times(MODELS["7b"], GPUS["a100"], layout, workload)["step"] * 1000 / 3600
    assert 18 / 3 < hours < 18 * 3  # the paper: 18 h for 1K steps on 8xA100


def test_sync_time_per_worker_channels_grows_with_workers_and_a_broadcast_does_not():
    m, g = MODELS["7b"], GPUS["h100"]
    per = [sync_seconds(m, g, n, broadcast=False) for n in (1, 2, 4, 64)]
    once = [sync_seconds(m, g, n, broadcast=True) for n in (1, 2, 4, 64)]
    assert per[1] == 2 * per[0] and per[3] == 64 * per[0] and len(set(once)) == 1 and once[0] == per[0]
    assert abs(per[0] - 2 * m.params / (g.nic_gbs * 1e9) * 1.40) < 1e-9  # 2P bytes, times the measured load ratio


def test_memory_terms():
    m, g, lay, w = MODELS["7b"], GPUS["a100"], Layout(4, 4), Workload()
    with_ckpt, without = learner_memory(m, g, lay, w), learner_memory(m, g, lay, replace(w, checkpointing=False))
    assert with_ckpt["activations"] < without["activations"] and with_ckpt["optimizer"] == without["optimizer"]
    assert abs(with_ckpt["optimizer"] - 12 * m.params / 4 / 2**30) < 1e-9  # fp32 master + m + v, sharded 4 ways
    half = learner_memory(m, g, Layout(8, 4), w)
    assert abs(half["weights"] * 2 - with_ckpt["weights"]) < 1e-9  # ZeRO-3 shards over the learner GPUs
    tp2 = rollout_memory(m, g, Layout(4, 4, rollout_tp=2), w)
    assert abs(tp2["weights"] * 2 - rollout_memory(m, g, lay, w)["weights"]) < 1e-9


def test_lora_terms():
    """LoRA (rank 64 on the 7 projections): the adapter count is the one peft makes for Qwen2.5-VL-7B (161M,
    counted on the meta-device model), its gradients and optimizer replace the full ones, no reference copy, a
    7B learner fits one 80 GB GPU, the update does no weight-gradient GEMMs of frozen weights, and a sync carries
    the merged projections (6.53B parameters), not all 8.29B. Catches the full terms left in for a LoRA run."""
    m, g, lay, w = MODELS["7b"], GPUS["h100"], Layout(1, 1), Workload()
    lora = replace(w, lora_rank=64)
    assert round(m.adapter(64) / 1e6) == 161 and round(m.projections / 1e7) == 653
    full, adapted = learner_memory(m, g, lay, w), learner_memory(m, g, lay, lora)
    assert adapted["reference"] == 0 and abs(adapted["optimizer"] - 12 * m.adapter(64) / 2**30) < 1e-9
    assert sum(adapted.values()) < g.memory_gib < sum(full.values())
    t_full, t_lora = step_times(m, g, lay, w), step_times(m, g, lay, lora)
    assert t_lora["update"] / t_full["update"] == (4 + 2 + 4) / (6 + 2 + 4)  # checkpointing on
    assert abs(t_lora["sync"] / t_full["sync"] - m.projections / m.params) < 1e-12


def test_capacity_prints_its_tables():
    r = run("capacity", "--model", "7b", "--gpu", "h100")
    assert r.returncode == 0, r.stderr
    for line in (
        "memory per GPU",
        "step time (s)",
        "18 h reported",
        "weight sync vs rollout workers",
        "512 GPUs",
        "learner, LoRA rank 64",
        "with LoRA rank 64",
    ):
        assert line in r.stdout
