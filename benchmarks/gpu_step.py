"""One measurement of ``python -m benchmarks gpu``, run in a process of its own: a DeepSpeed engine does not give all
its GPU memory back when it is dropped, and one row running out of memory must not end the check.

``python -m benchmarks.gpu_step SPEC.json RESULT.json``: SPEC says what to measure (``kind``: ``learner`` for RL
steps of ``learner.engine.Learner``, ``numerics`` for the precision and LM-head rows), RESULT gets the numbers, or
``{"error": ...}`` (``"oom": true`` when the device ran out of memory).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import statistics
import sys
import time
from pathlib import Path

QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONWARNINGS": "ignore",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TORCH_CPP_LOG_LEVEL": "ERROR",
    "TORCH_LOGS": "-all",
    "NCCL_DEBUG": "WARN",
}


def frame_size(pixels: int) -> tuple[int, int]:
    """(height, width) of a frame with ``pixels`` x 28 x 28 pixels, as square as the factors allow: 128 -> 224 x
    448, the paper's training budget (16 x 32 patches, 128 merged tokens per frame pair)."""
    a = max(d for d in range(1, int(pixels**0.5) + 1) if pixels % d == 0)
    return 28 * a, 28 * (pixels // a)


def make_rollouts(tokenizer, frames: int, pixels: int, group: int, resp_min: int, resp_max: int, seed: int = 0):
    """G rollouts of one synthetic video prompt (uint8 noise frames, no decoding): responses of ``resp_min`` to
    ``resp_max`` random text tokens laid out as <observation>..</observation><think>..</think><answer>..</answer>
    (so the process masks split them), rewards that vary within the group in both processes."""
    import numpy as np

    from learner.engine import Rollout
    from toy.shaped_model import text_token_ids
    from videoqa.loader import LoadedSample
    from videoqa.schema import Sample
    from videoqa.video import VideoClip

    rng = np.random.default_rng(seed)
    h, w = frame_size(pixels)
    clip = VideoClip(
        frames=rng.integers(0, 256, (frames, h, w, 3), dtype=np.uint8),
        indices=list(range(frames)),
        native_fps=2.0,
        total_frames=frames,
    )
    sample = Sample(
        problem_id="gpu-check",
        problem="Which direction does the red square move?",
        data_type="video",
        problem_type="multiple choice",
        solution="<answer>A</answer>",
        path="none.mp4",
        options=["A. left", "B. right", "C. up", "D. down"],
    )
    item = LoadedSample(sample, video=clip)
    special = set(tokenizer.all_special_ids)
    pool = np.array([i for i in text_token_ids(tokenizer) if i not in special])
    head = tokenizer.encode("<observation>", add_special_tokens=False)
    mid = tokenizer.encode("</observation><think>", add_special_tokens=False)
    tail = tokenizer.encode("</think><answer>A</answer>", add_special_tokens=False) + [
        tokenizer.convert_tokens_to_ids("<|im_end|>")
    ]
    lengths = np.linspace(resp_min, resp_max, group).round().astype(int)
    rollouts = []
    for j, n in enumerate(lengths):
        free = max(2, int(n) - len(head) - len(mid) - len(tail))
        body = rng.choice(pool, free).tolist()
        ids = head + body[: free // 3] + mid + body[free // 3 :] + tail
        rollouts.append(Rollout(item, ids, r_perception=float(j % 2), r_reasoning=float(j < group // 2)))
    return rollouts


def _reset_peak(device: str) -> str:
    """Starts a peak-memory window; returns what the peak will be: the allocator's, or the process's RSS."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return "torch.cuda.max_memory_allocated"
    try:  # the kernel resets the process's peak RSS (what getrusage reports) to its current RSS
        Path("/proc/self/clear_refs").write_text("5")
        return "peak RSS (getrusage, reset per measurement)"
    except OSError:
        return "peak RSS (getrusage, since the process started)"


def _peak(device: str) -> int:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _current(device: str) -> int:
    import torch

    if device == "cuda":
        return int(torch.cuda.memory_allocated())
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _device_info(device: str) -> dict:
    import torch

    if device != "cuda":
        return {"device_name": "cpu", "device_memory": None}
    props = torch.cuda.get_device_properties(0)
    return {
        "device_name": torch.cuda.get_device_name(0),
        "device_memory": int(props.total_memory),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


def build_model(spec: dict) -> float:
    """Builds the spec's random model into ``spec["model"]`` unless it is there; returns the seconds it took."""
    from toy.shaped_model import build_shaped_model

    b = spec.get("build")
    if not b or (Path(spec["model"]) / "config.json").is_file():
        return 0.0
    t0 = time.perf_counter()
    build_shaped_model(
        spec["model"],
        b["shape"],
        text_layers=b.get("text_layers"),
        vision_blocks=b.get("vision_blocks"),
        dtype="bfloat16" if spec["device"] == "cuda" else "float32",
        device=spec["device"],
    )
    import gc

    import torch

    gc.collect()
    if spec["device"] == "cuda":
        torch.cuda.empty_cache()
    return time.perf_counter() - t0


def run_learner(spec: dict) -> dict:
    """Warm-up RL step, then ``steps`` timed ones of the project's ``Learner.rl_step`` (ZeRO-2, world of one)."""
    from cluster.config import LearnerSection
    from learner.batch import prompt_inputs
    from learner.engine import Learner

    device = spec["device"]
    out = {"build_s": build_model(spec), "allocated_after_build": _current(device)}  # ~0 on cuda: nothing kept
    freeze = list(LearnerSection().freeze)  # the default: the vision tower
    if spec.get("freeze_embeddings"):  # the CPU run: with the (tied) 152K-row embeddings trainable it needs 14 GB
        freeze.append("model.language_model.embed_tokens")
    cfg = LearnerSection(
        num_gpus=1 if device == "cuda" else 0,
        zero_stage=2,
        lr=1e-6,
        freeze=freeze,
        gradient_checkpointing=spec["checkpointing"],
        micro_batch_size=spec["micro_batch"],
    )
    t0 = time.perf_counter()
    learner = Learner(cfg, spec["model"])
    logging.getLogger("DeepSpeed").setLevel(logging.DEBUG if spec.get("verbose") else logging.WARNING)
    out["load_s"] = time.perf_counter() - t0
    rollouts = make_rollouts(
        learner.processor.tokenizer,
        spec["frames"],
        spec["pixels"],
        spec["group"],
        spec["resp_min"],
        spec["resp_max"],
        spec.get("seed", 0),
    )
    prompt = int(prompt_inputs(learner.processor, rollouts[0].item)["input_ids"].shape[1])
    module = learner.engine.module
    out.update(
        prompt_tokens=prompt,
        response_tokens=sum(len(r.response_ids) for r in rollouts),
        trainable_params=sum(p.numel() for p in module.parameters() if p.requires_grad),
        params=sum(p.numel() for p in module.parameters()),
        text_layers=module.config.text_config.num_hidden_layers,
        vision_blocks=module.config.vision_config.depth,
        extra_forwards=1 + (learner.reference is not None),
        dtype=cfg.dtype,
        backend=cfg.backend,
        freeze=freeze,
    )
    out["tokens"] = out["prompt_tokens"] * len(rollouts) + out["response_tokens"]
    media = {module.config.image_token_id, module.config.video_token_id}
    out["media_ids_in_responses"] = sum(t in media for r in rollouts for t in r.response_ids)
    t0 = time.perf_counter()
    out["warmup"] = learner.rl_step(rollouts, spec["group"])
    out["warmup_s"] = time.perf_counter() - t0
    out["peak_kind"] = _reset_peak(device)
    times, stats = [], []
    for _ in range(spec["steps"]):
        _sync(device)
        t0 = time.perf_counter()
        stats.append(learner.rl_step(rollouts, spec["group"]))
        _sync(device)
        times.append(time.perf_counter() - t0)
    out.update(peak_bytes=_peak(device), step_times=times, step_s=statistics.median(times), stats=stats[-1])
    return out


def _full_logprobs(model, batch):
    """The plain way: the model's (B, L, V) logits, log-softmax over all of them in float32, then gather."""
    import torch

    kwargs = {k: v.to(model.device) for k, v in batch.model_kwargs.items()}
    logp = torch.log_softmax(model(**kwargs, use_cache=False).logits.float(), -1)
    B, R = batch.response_ids.shape
    starts = torch.tensor([P - 1 for P in batch.prompt_lengths], device=logp.device)
    at = (starts[:, None] + torch.arange(R, device=logp.device)[None, :]).clamp(max=logp.shape[1] - 1)
    ids = batch.response_ids.to(logp.device)
    return logp[torch.arange(B, device=logp.device)[:, None], at, ids] * batch.response_mask.to(logp.device)


def run_numerics(spec: dict) -> dict:
    """The LM head's peak memory, chunked (``learner.batch.response_logprobs``) vs full logits, then bf16 vs float32
    log-probs of the same weights, on one no-grad batch of the G rollouts."""
    import copy
    import gc

    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from learner.batch import build_inputs, prompt_inputs, response_logprobs

    device = spec["device"]
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 (no TF32 matmuls) for the reference
    torch.backends.cudnn.allow_tf32 = False
    out = {"build_s": build_model(spec)}
    processor = AutoProcessor.from_pretrained(spec["model"])
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(spec["model"], dtype=torch.bfloat16).to(device).eval()
    rollouts = make_rollouts(
        processor.tokenizer,
        spec["frames"],
        spec["pixels"],
        spec["group"],
        spec["resp_min"],
        spec["resp_max"],
        spec.get("seed", 0),
    )
    prompt = prompt_inputs(processor, rollouts[0].item)
    batch = build_inputs(
        processor,
        model.config,
        [r.item for r in rollouts],
        [r.response_ids for r in rollouts],
        [prompt] * len(rollouts),
    )
    mask = batch.response_mask.double()
    out.update(
        rows=len(rollouts),
        response_tokens=int(mask.sum()),
        seq_len=int(batch.model_kwargs["input_ids"].shape[1]),
        vocab=int(model.config.text_config.vocab_size),
    )
    with torch.no_grad():
        response_logprobs(model, batch)  # warm-up (kernels, allocator)
        for name, fn in (("chunked", response_logprobs), ("full", _full_logprobs)):
            gc.collect()
            kind = _reset_peak(device)
            base = _current(device)
            lp = fn(model, batch)
            peak = _peak(device)
            out[name] = {"peak_bytes": peak, "above_start_bytes": max(0, peak - base), "peak_kind": kind}
            out[name + "_lp"] = lp.double().cpu()
            del lp
        out["chunked_vs_full_max_diff"] = float(((out.pop("chunked_lp") - out.pop("full_lp")).abs() * mask).max())
        lp16 = response_logprobs(model, batch).double().cpu()
        model32 = copy.deepcopy(model).float()
        del model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        lp32 = response_logprobs(model32, batch).double().cpu()
    d = (lp16 - lp32) * mask
    out["max_abs_diff"] = float(d.abs().max())
    out["k3"] = float(((torch.exp(d) - 1 - d) * mask).sum() / mask.sum())  # k3 of KL(float32 || bf16) per token
    out["mean_abs_diff"] = float(d.abs().sum() / mask.sum())
    return out


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    result_path = Path(argv[1])
    if not spec.get("verbose"):
        os.environ.update(QUIET_ENV)
        logging.basicConfig(level=logging.WARNING)
    import torch

    result: dict = {"kind": spec["kind"]}
    try:
        result.update(_device_info(spec["device"]))
        result.update(run_learner(spec) if spec["kind"] == "learner" else run_numerics(spec))
    except Exception as e:  # noqa: BLE001 - recorded in the row; the traceback goes to this process's log
        import traceback

        traceback.print_exc()
        first = (str(e).strip().splitlines() or [""])[0][:300]
        oom = isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()
        result.update(error=("out of memory: " if oom else f"{type(e).__name__}: ") + first, oom=oom)
        if oom and spec["device"] == "cuda":
            result["peak_bytes"] = int(torch.cuda.max_memory_allocated())
    result_path.write_text(json.dumps(result, indent=1, default=str))
    return 0 if "error" not in result else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
