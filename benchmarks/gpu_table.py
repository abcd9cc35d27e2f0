"""The GPU check's table (``python -m benchmarks gpu``): the device, the batch, one row per measurement, and what
tokens/s and MFU count. A CPU run's table says that its figures are not GPU figures."""

from __future__ import annotations

GIB = 2**30
# Dense bf16 peak (no sparsity), TFLOP/s, by what torch.cuda.get_device_name contains; the first match wins.
PEAK_TFLOPS = (
    ("H200 NVL", 835.0, "H200 NVL"),
    ("H200", 989.0, "H200 SXM"),
    ("H100 PCIe", 756.0, "H100 PCIe"),
    ("H100 NVL", 835.0, "H100 NVL"),
    ("H100", 989.0, "H100 SXM"),
)


def peak_tflops(name: str) -> tuple[float, str] | None:
    for key, tflops, label in PEAK_TFLOPS:
        if key in name:
            return tflops, label
    return None


def fmt_bytes(b) -> str:
    return "-" if b is None else f"{b / GIB:.2f} GiB"


def render(c) -> str:
    s, cpu = c.s, c.device == "cpu"
    from benchmarks.gpu_step import frame_size

    h, w = frame_size(s["pixels"])
    lines = ["# GPU check (`python -m benchmarks gpu`)", ""]
    if cpu:
        lines += [
            "**CPU run (`--device cpu`): these are NOT GPU figures.** The check's code on 3B-width slices "
            f"({s['layers']} decoder layer(s), 1 vision block) at small sizes; float32, gloo; the embeddings "
            "(tied to the LM head) frozen as well as the vision tower, to fit the box; memory is the process's "
            "peak RSS (getrusage; reset per measurement through /proc/self/clear_refs); no MFU.",
            "",
        ]
    else:
        name = c.info.get("device_name", "?")
        peak = peak_tflops(name)
        mem = c.info.get("device_memory")
        lines += [
            f"Device: {name} ({fmt_bytes(mem)}), torch {c.info.get('torch', '?')}, "
            f"CUDA {c.info.get('cuda', '?')}; bf16, DeepSpeed ZeRO-2, nccl world of one. MFU against "
            + (f"{peak[0]:.0f} TFLOP/s (dense bf16 peak of the {peak[1]})" if peak else "no known peak (MFU -)")
            + "; memory is torch.cuda.max_memory_allocated over the timed steps.",
            "",
        ]
    lines += [
        f"Batch: G={s['group']} rollouts of one prompt, {s['frames']} frames of {h}x{w} "
        f"({s['pixels']}x28x28 px), responses of {s['resp_min']}-{s['resp_max']} random text tokens; "
        f"micro-batch {s['micro_batch']}; "
        f"PA-GRPO, beta 0.04 (old log-probs and the KL reference: 2 no-grad forwards); vision tower frozen "
        f"(`learner.freeze`); median of {s['steps']} step(s) after a warm-up step.",
        "",
        "| measurement | step s | tokens/s | peak memory | MFU | note |",
        "|---|---|---|---|---|---|",
    ]
    for row in c.rows:
        if row["kind"] == "rl_step":
            if "step_s" not in row:
                lines.append(f"| {row['label']} | - | - | - | - | {row['note']} |")
                continue
            mfu = "-" if row.get("mfu") is None else f"{row['mfu']:.2f}"
            lines.append(
                f"| {row['label']} | {row['step_s']:.2f} | {row['tokens_per_s']:,.0f} | "
                f"{fmt_bytes(row['peak_bytes'])} | {mfu} | {row['note']} |"
            )
        else:
            lines.append(f"| {row['label']} | - | - | {row.get('memory', '-')} | - | {row['note']} |")
    lines += [
        "",
        "tokens/s: prompt + response tokens of the G rows per step. MFU: model FLOPs (6 x trainable params x "
        "tokens for the policy's forward and backward, 2 x trainable params x tokens for each no-grad forward; "
        "the frozen vision tower, attention's quadratic term and checkpointing's recompute are not counted) "
        "per second over the card's peak.",
    ]
    if not c.done:
        lines += ["", "**Incomplete**: the check stopped (or is still running) before its last row."]
    return "\n".join(lines) + "\n"
