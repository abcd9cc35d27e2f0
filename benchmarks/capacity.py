"""A capacity model of a PA-GRPO run on GPUs (`python -m benchmarks capacity`): memory per GPU, the step-time
split and the weight-sync time vs the number of rollout workers, from stated constants. It is arithmetic, not a
measurement: every constant is named below with where it comes from, and the figures we measured on the CPU boxes
enter only as ratios (the sync's excess over a raw transfer, the driver's overhead).

Memory (bytes, per GPU):
- learner, ZeRO-3 over N ranks: bf16 weights 2P/N + bf16 gradients 2P/N + fp32 master, m and v 12P/N; activations
  of one micro-batch of T tokens: with checkpointing the decoder layers' inputs (2*h*T*L bytes) plus one layer's
  working set (34*h*T bytes; Korthikanti et al. 2022, flash attention), without it 34*h*T*L; the log-prob chunk's
  float32 logits (4*mb*128*V).
- the KL reference: bf16 weights 2P/N (ZeRO-3 inference).
- rollout worker: bf16 weights 2P/tp, KV cache 2*L*kv*d*2 bytes per token for the in-flight sequences.

Time (seconds per step):
- generation: prefill FLOPs 2*P*prompt tokens at MFU_PREFILL, then decode: each of R steps reads the weights once
  (HBM-bound, at DECODE_BW_EFF of the bandwidth), with the batch's sequences spread over the rollout workers.
- scoring: the judge (one prefill and `judge_tokens` decode steps per unique observation, HBM-bound likewise).
- update: 6*P*tokens for forward+backward (+2*P*tokens recompute with checkpointing) plus 2 forward passes
  (old policy and reference log-probs, 2*P*tokens each), at MFU_TRAIN over the learner GPUs.
- sync: 2P bytes. Per-worker channels (today's transport) send them once per worker out of the sender's NIC;
  a broadcast sends them once. Both pay the receiver's load (SYNC_LOAD_RATIO, measured) on top.

With LoRA of rank r (``learner.lora``) on the language model's projections (A = r * the sum of their input and
output widths adapter parameters): gradients 2A/N and optimizer 12A/N instead of 2P/N and 12P/N, no reference
copy (the reference is the model with its adapters off); the update's backward computes activation gradients only
(2P per token instead of 4P: no weight gradients of frozen weights); a sync carries the adapted projections merged
(2 * their parameter count bytes; ``learner.lora.sync=merged``) or the adapters alone (2A bytes; ``=adapter``),
not 2P.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

# -- stated constants --------------------------------------------------------------------------------------------
MFU_TRAIN = 0.35  # bf16 training MFU at this scale with ZeRO-3 (typical published 30-45%)
MFU_PREFILL = 0.5  # vLLM prefill
DECODE_BW_EFF = 0.6  # fraction of HBM bandwidth a decode step achieves reading the weights
SYNC_LOAD_RATIO = (
    1.40  # measured: weight sync into a vLLM worker / raw gloo broadcast of the same bytes (docs/benchmarks.md)
)
DRIVER_OVERHEAD = 1.001  # measured: step wall time / sum of the parts (python -m benchmarks train)
LOGPROB_CHUNK = 128  # learner.batch.LOGPROB_CHUNK


@dataclass(frozen=True)
class Model:
    name: str
    params: float  # P
    layers: int
    hidden: int
    kv_heads: int
    head_dim: int
    vocab: int
    heads: int = 0
    intermediate: int = 0

    @property
    def projections(self) -> float:
        """Parameters of the decoder's q, k, v, o, gate, up and down projections (what LoRA adapts)."""
        q = self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        return self.layers * (2 * self.hidden * q + 2 * self.hidden * kv + 3 * self.hidden * self.intermediate)

    def adapter(self, rank: int) -> float:
        """LoRA adapter parameters of rank ``rank`` on every projection: rank x (input + output width)."""
        q, kv, h, i = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.hidden, self.intermediate
        return rank * self.layers * ((h + q) * 2 + (h + kv) * 2 + (h + i) * 3)


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float
    bf16_tflops: float  # dense peak
    hbm_tbs: float  # HBM bandwidth, TB/s
    nic_gbs: float  # inter-node bandwidth per GPU, GB/s (InfiniBand 200-400 Gb/s per GPU)


MODELS = {
    "3b": Model("Qwen2.5-VL-3B", 3.75e9, 36, 2048, 2, 128, 151_936, heads=16, intermediate=11008),
    "7b": Model("Qwen2.5-VL-7B", 8.29e9, 28, 3584, 4, 128, 152_064, heads=28, intermediate=18944),
    "72b": Model("Qwen2.5-VL-72B", 73.4e9, 80, 8192, 8, 128, 152_064, heads=64, intermediate=29568),
}
JUDGE_72B = Model("Qwen2.5-72B-Instruct (judge)", 72.7e9, 80, 8192, 8, 128, 152_064)
GPUS = {
    "a100": GPU("A100-80GB", 80, 312, 2.04, 25),
    "h100": GPU("H100-80GB", 80, 989, 3.35, 50),
    "h200": GPU("H200-141GB", 141, 989, 4.8, 50),
}


@dataclass(frozen=True)
class Workload:
    prompts: int = 8  # B
    group: int = 8  # G
    prompt_tokens: int = 1150  # 16 frames at 128x28x28: 8 temporal patches x 128 tokens, plus ~125 text tokens
    response_tokens: int = 600  # mean generated tokens (max 1024)
    max_response_tokens: int = 1024  # decode steps of the longest sequence bound generation
    micro_batch: int = 4  # rollouts per forward/backward on a learner rank
    judge_prompt_tokens: int = 500
    judge_tokens: int = 256
    checkpointing: bool = True
    lora_rank: int = 0  # learner.lora.rank; 0: full fine-tuning
    lora_sync: str = "merged"  # learner.lora.sync: "merged" (the adapted projections) or "adapter" (A only)


@dataclass(frozen=True)
class Layout:
    learner_gpus: int
    rollout_gpus: int
    judge_gpus: int = 4
    rollout_tp: int = 1

    @property
    def rollout_workers(self) -> int:
        return self.rollout_gpus // self.rollout_tp

    @property
    def total(self) -> int:
        return self.learner_gpus + self.rollout_gpus + self.judge_gpus


GIB = 2**30


def learner_memory(m: Model, gpu: GPU, lay: Layout, w: Workload) -> dict[str, float]:
    """GiB per learner GPU (ZeRO-3 over the learner GPUs)."""
    n = lay.learner_gpus
    tokens = w.micro_batch * (w.prompt_tokens + w.response_tokens)
    layer_work = 34 * m.hidden * tokens
    acts = (2 * m.hidden * tokens * m.layers + layer_work) if w.checkpointing else layer_work * m.layers
    trained = m.adapter(w.lora_rank) if w.lora_rank else m.params
    return {
        "weights": (2 * m.params + (2 * trained if w.lora_rank else 0)) / n / GIB,
        "gradients": 2 * trained / n / GIB,
        "optimizer": 12 * trained / n / GIB,
        "reference": 0.0 if w.lora_rank else 2 * m.params / n / GIB,
        "activations": acts / GIB,
        "logits chunk": 4 * w.micro_batch * LOGPROB_CHUNK * m.vocab / GIB,
    }


def rollout_memory(m: Model, gpu: GPU, lay: Layout, w: Workload) -> dict[str, float]:
    """GiB per rollout GPU: its weight shard and the KV cache of its share of the batch at full length."""
    per_worker = math.ceil(w.prompts * w.group / lay.rollout_workers)
    kv_per_token = 2 * m.layers * m.kv_heads * m.head_dim * 2
    kv = per_worker * (w.prompt_tokens + w.max_response_tokens) * kv_per_token / lay.rollout_tp
    return {"weights": 2 * m.params / lay.rollout_tp / GIB, "kv cache": kv / GIB}


def decode_seconds(m: Model, gpu: GPU, gpus: int, steps: int) -> float:
    """``steps`` decode steps of a model sharded over ``gpus``: each reads the weights once (HBM-bound)."""
    return steps * (2 * m.params / gpus) / (gpu.hbm_tbs * 1e12 * DECODE_BW_EFF)


def step_times(
    m: Model, gpu: GPU, lay: Layout, w: Workload, judge: Model = JUDGE_72B, broadcast: bool = False
) -> dict[str, float]:
    rollouts = w.prompts * w.group
    per_worker = math.ceil(rollouts / lay.rollout_workers)
    # generation: prefill (the G samples of a prompt share it: prefix caching) then the longest sequence's decode
    prefill = (
        2
        * m.params
        * math.ceil(w.prompts / lay.rollout_workers)
        * w.prompt_tokens
        / (lay.rollout_tp * gpu.bf16_tflops * 1e12 * MFU_PREFILL)
    )
    generate = prefill + decode_seconds(m, gpu, lay.rollout_tp, w.max_response_tokens) * (1 + per_worker / 256)
    # scoring: one judge call per rollout (the cache only helps repeats), spread over judge engines of up to 4 GPUs
    judge_tp = min(4, lay.judge_gpus)
    engines = max(1, lay.judge_gpus // judge_tp)
    judge_prefill = (
        2 * judge.params * rollouts * w.judge_prompt_tokens / (lay.judge_gpus * gpu.bf16_tflops * 1e12 * MFU_PREFILL)
    )
    score = judge_prefill + decode_seconds(judge, gpu, judge_tp, w.judge_tokens) * (1 + rollouts / engines / 256)
    tokens = rollouts * (w.prompt_tokens + w.response_tokens)
    train = 4 if w.lora_rank else 6  # forward 2P + backward 4P (2P without the frozen weights' gradients)
    flops = (train + (2 if w.checkpointing else 0) + 2 * 2) * m.params * tokens
    update = flops / (lay.learner_gpus * gpu.bf16_tflops * 1e12 * MFU_TRAIN)
    sent = m.params if not w.lora_rank else m.adapter(w.lora_rank) if w.lora_sync == "adapter" else m.projections
    sync = sync_seconds(m, gpu, lay.rollout_workers, broadcast, sent)
    return {
        "generate": generate,
        "score": score,
        "update": update,
        "sync": sync,
        "step": (generate + score + update + sync) * DRIVER_OVERHEAD,
    }


def sync_seconds(m: Model, gpu: GPU, workers: int, broadcast: bool, sent: float | None = None) -> float:
    """2P bytes (``sent`` parameters in bf16: LoRA's merged projections) to ``workers`` rollout workers out of the
    sender's NIC: once per worker (per-worker channels) or once (a broadcast), plus the receivers' load (the
    measured excess over a raw transfer)."""
    once = 2 * (m.params if sent is None else sent) / (gpu.nic_gbs * 1e9)
    return once * (1 if broadcast else workers) * SYNC_LOAD_RATIO


def paper_layout() -> tuple[Layout, Workload]:
    """The paper's 8xA100 for RL: 4 learner GPUs, 2 rollout GPUs and 2 for the judge (a 72B judge at TP=2 does
    not fit 2x80 GB in bf16 with a KV cache, so this also assumes the judge's share is that small: stated)."""
    return Layout(learner_gpus=4, rollout_gpus=2, judge_gpus=2), Workload()


def run_bench_capacity(
    model: str = "7b",
    gpu: str = "a100",
    learner_gpus: int = 4,
    rollout_gpus: int = 4,
    judge_gpus: int = 4,
    steps: int = 1000,
) -> int:
    m, g = MODELS[model], GPUS[gpu]
    lay = Layout(learner_gpus, rollout_gpus, judge_gpus)
    w = Workload()
    print(
        f"\nCapacity model: {m.name} on {g.name}; {lay.learner_gpus} learner + {lay.rollout_gpus} rollout + "
        f"{lay.judge_gpus} judge GPUs; B={w.prompts} x G={w.group}, {w.prompt_tokens} prompt + {w.response_tokens} "
        f"response tokens (max {w.max_response_tokens}); micro-batch {w.micro_batch}"
    )
    print("\nmemory per GPU (GiB)")
    for label, ckpt in (("learner, checkpointing", True), ("learner, no checkpointing", False)):
        mem = learner_memory(m, g, lay, replace(w, checkpointing=ckpt))
        parts = ", ".join(f"{k} {v:.1f}" for k, v in mem.items())
        total = sum(mem.values())
        print(
            f"  {label:26s} {total:6.1f} of {g.memory_gib:.0f}{'' if total < g.memory_gib else '  DOES NOT FIT'}: {parts}"
        )
    lora = replace(w, lora_rank=64)
    mem = learner_memory(m, g, lay, lora)
    total = sum(mem.values())
    print(
        f"  {'learner, LoRA rank 64':26s} {total:6.1f} of {g.memory_gib:.0f}"
        f"{'' if total < g.memory_gib else '  DOES NOT FIT'}: " + ", ".join(f"{k} {v:.1f}" for k, v in mem.items())
    )
    one = learner_memory(m, g, replace(lay, learner_gpus=1), lora)
    print(
        f"  {'  the same on 1 GPU':26s} {sum(one.values()):6.1f} of {g.memory_gib:.0f}"
        f"{'' if sum(one.values()) < g.memory_gib else '  DOES NOT FIT'}"
    )
    mem = rollout_memory(m, g, lay, w)
    print(
        f"  {'rollout worker':26s} {sum(mem.values()):6.1f} of {g.memory_gib:.0f}: "
        + ", ".join(f"{k} {v:.1f}" for k, v in mem.items())
    )
    t = step_times(m, g, lay, w)
    print("\nstep time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()))
    for sync, sent in (
        ("merged", f"the {m.projections / 1e9:.2f}B merged"),
        ("adapter", f"the {m.adapter(64) / 1e6:.0f}M adapter parameters"),
    ):
        tl = step_times(m, g, lay, replace(lora, lora_sync=sync))
        print(
            f"  with LoRA rank 64, sync={sync}: "
            + ", ".join(f"{k} {v:.1f}" for k, v in tl.items())
            + f" (a sync carries {sent})"
        )
    print(f"  {steps} steps: {t['step'] * steps / 3600:.1f} h")
    pl, pw = paper_layout()
    paper = step_times(MODELS["7b"], GPUS["a100"], pl, pw)["step"] * 1000 / 3600
    print(
        f"\nthe paper's run (7B, 1K steps, 8xA100 as {pl.learner_gpus} learner + {pl.rollout_gpus} rollout + "
        f"{pl.judge_gpus} judge GPUs): {paper:.1f} h modelled vs 18 h reported"
    )
    print("\nweight sync vs rollout workers (s; per-worker channels = today's transport, broadcast = one send)")
    print(f"  {'workers':>8s} {'per-worker':>11s} {'broadcast':>10s}")
    for n in (1, 2, 4, 8, 16, 64, 256):
        print(f"  {n:8d} {sync_seconds(m, g, n, False):11.1f} {sync_seconds(m, g, n, True):10.1f}")
    print("\nscaling (B grows with the GPUs: 1 prompt x G per rollout GPU), step time split (s) and the bound:")
    for total in (8, 64, 512):
        judge_n = max(2, total // 8)
        learner = total // 2
        lay_n = Layout(learner_gpus=learner, rollout_gpus=total - learner - judge_n, judge_gpus=judge_n)
        w_n = replace(w, prompts=max(8, lay_n.rollout_gpus))
        for broadcast in (False, True):
            tn = step_times(m, g, lay_n, w_n, broadcast=broadcast)
            bound = max(("generate", "score", "update", "sync"), key=lambda k: tn[k])
            print(
                f"  {total:4d} GPUs ({lay_n.learner_gpus}/{lay_n.rollout_gpus}/{lay_n.judge_gpus}), B={w_n.prompts}, "
                f"{'broadcast ' if broadcast else 'per-worker'}: "
                + ", ".join(f"{k} {tn[k]:.1f}" for k in ("generate", "score", "update", "sync"))
                + f" -> bound by {bound}"
            )
    return 0
