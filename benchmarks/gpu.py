"""The learner on one GPU, printed as one table (``python -m benchmarks gpu --out DIR``; on a borrowed GPU machine
through ``scripts/gpu-check.sh``): RL steps of ``learner.engine.Learner`` for random Qwen2.5-VL-3B at full depth and
for 7B (extrapolated from shallow slices: the full 7B with its optimizer does not fit one 80 GB card), bf16 vs
float32 log-probs, and the chunked LM head's memory against full logits. ``--device cpu`` runs the same code on
3B-width slices at small sizes (what CI exercises): its figures are not GPU figures, and the table says so.

Each measurement runs in its own process (``benchmarks.gpu_step``); models are built in a temporary folder and
deleted after their rows. The table goes to ``DIR/gpu-check.md`` (rewritten after every row, so that a run cut
short still leaves what it measured) with the raw numbers in ``DIR/gpu-check.json`` and each process's log under
``DIR/logs/``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.gpu_table import fmt_bytes, peak_tflops, render

ROWS = ("3b", "7b", "precision", "lmhead")
PROFILES = {  # the paper's shapes on a GPU; a CPU run that finishes in a minute or two on 2 cores
    "cuda": dict(
        frames=16,
        pixels=128,
        group=8,
        resp_min=600,
        resp_max=1024,
        micro_batch=4,
        steps=2,
        budget_s=420,
        layers=None,
        depths=(2, 4),
        freeze_embeddings=False,
    ),
    "cpu": dict(
        frames=2,
        pixels=4,
        group=2,
        resp_min=24,
        resp_max=48,
        micro_batch=2,
        steps=1,
        budget_s=0,
        layers=1,
        depths=(1, 2),
        freeze_embeddings=True,
    ),
}

WORLD_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class Check:
    def __init__(self, out: Path, device: str, settings: dict, verbose: bool):
        self.out, self.device, self.s, self.verbose = out, device, settings, verbose
        self.rows: list[dict] = []
        self.info: dict = {}
        self.done = False
        self.t0 = time.monotonic()
        self.work = Path(tempfile.mkdtemp(prefix="videop2r-gpu-check-", dir=settings.get("work_dir")))
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.cache: dict = {}  # (model key, checkpointing) -> learner result: a CPU run reuses a depth it measured

    # -- running one measurement -------------------------------------------------------------------------------
    def left_s(self) -> float:
        budget = self.s["budget_s"]
        return float("inf") if not budget else budget - (time.monotonic() - self.t0)

    def measure(self, name: str, spec: dict) -> dict:
        keys = ("frames", "pixels", "group", "resp_min", "resp_max", "micro_batch", "steps", "freeze_embeddings")
        spec = {**spec, "device": self.device, "verbose": self.verbose, **{k: self.s[k] for k in keys}}
        if self.left_s() < 30:
            return {"error": f"skipped: the check's time budget ({self.s['budget_s']:.0f} s) is spent", "skipped": True}
        spec_path, result = self.work / f"{name}.spec.json", self.work / f"{name}.result.json"
        spec_path.write_text(json.dumps(spec))
        # each measurement is a world of one: a caller's world variables (a launcher's, or those a lone learner
        # earlier in the calling process set) would make it rank 0 of a store already bound (EADDRINUSE)
        env = {k: v for k, v in os.environ.items() if k not in WORLD_VARS}
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        timeout = None if self.left_s() == float("inf") else max(30.0, self.left_s())
        print(f"[gpu] {name} ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        log = self.logs / f"{name}.log"
        with open(log, "w") as f:
            try:
                cmd = [sys.executable, "-m", "benchmarks.gpu_step", str(spec_path), str(result)]
                rc = subprocess.run(
                    cmd,
                    cwd=root,
                    env=env,
                    stdout=None if self.verbose else f,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                ).returncode
            except subprocess.TimeoutExpired:
                rc = None
        took = time.monotonic() - t0
        if result.is_file():
            r = json.loads(result.read_text())
        elif rc is None:
            r = {"error": f"timed out after {took:.0f} s (the check's time budget)"}
        else:
            tail = log.read_text().strip().splitlines()[-1:] if log.is_file() else []
            r = {"error": f"exit code {rc}: {tail[0][:200] if tail else 'no output'} (see logs/{name}.log)"}
        r["wall_s"] = took
        for k in ("device_name", "device_memory", "torch", "cuda"):
            if r.get(k) is not None:
                self.info.setdefault(k, r[k])
        print(f"[gpu] {name}: {took:.0f} s" + (f", {r['error']}" if "error" in r else ""), file=sys.stderr, flush=True)
        return r

    def model(self, shape: str, text_layers=None, vision_blocks=None) -> dict:
        """The spec of a model folder, with what to build when it is not there yet (the measuring process builds
        it: the GPU's memory comes back when that process ends)."""
        key = f"{shape}-{text_layers or 'all'}-{vision_blocks or 'all'}"
        path = self.work / key
        spec = {"model": str(path), "key": key}
        if not (path / "config.json").is_file():
            spec["build"] = {"shape": shape, "text_layers": text_layers, "vision_blocks": vision_blocks}
        return spec

    def learner(self, name: str, model: tuple, checkpointing: bool) -> dict:
        key = (model, checkpointing)
        if key not in self.cache:
            self.cache[key] = self.measure(
                name, {**self.model(*model), "kind": "learner", "checkpointing": checkpointing}
            )
        return self.cache[key]

    def drop_models(self) -> None:
        for p in self.work.iterdir():
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)

    # -- rows ----------------------------------------------------------------------------------------------------
    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.write()

    def rl_row(self, label: str, r: dict, note: str = "") -> dict:
        row = {"kind": "rl_step", "label": label, "result": r}
        if "error" in r:  # out of memory is a finding (it does not fit); a crash is a failed check
            note = r["error"] + (f" (peak {fmt_bytes(r['peak_bytes'])} allocated)" if r.get("peak_bytes") else "")
            return {**row, "note": note, "failed": not (r.get("oom") or r.get("skipped"))}
        flops = (6 + 2 * r["extra_forwards"]) * r["trainable_params"] * r["tokens"]
        note = note or (
            f"{r['response_tokens'] / r['step_s']:,.0f} response tok/s; load {r['load_s']:.0f} s, "
            f"warm-up step {r['warmup_s']:.1f} s"
        )
        row.update(
            step_s=r["step_s"],
            tokens_per_s=r["tokens"] / r["step_s"],
            peak_bytes=r["peak_bytes"],
            peak_kind=r["peak_kind"],
            flops=flops,
            note=note,
        )
        peak = peak_tflops(self.info.get("device_name", "")) if self.device == "cuda" else None
        row["mfu"] = flops / r["step_s"] / (peak[0] * 1e12) if peak else None
        return row

    def write(self) -> None:
        md = self.out / "gpu-check.md"
        md.write_text(render(self))
        (self.out / "gpu-check.json").write_text(
            json.dumps(
                {
                    "device": self.device,
                    "info": self.info,
                    "settings": self.s,
                    "complete": self.done,
                    "rows": self.rows,
                    "elapsed_s": time.monotonic() - self.t0,
                },
                indent=1,
                default=str,
            )
        )


def _extrapolate(a: dict, b: dict, la: int, lb: int, target: int) -> dict:
    """Linear in decoder layers through the two measurements: time, memory and trainable parameters."""

    def at(x, y):
        return x + (y - x) / (lb - la) * (target - la)

    return {
        **b,
        "step_s": at(a["step_s"], b["step_s"]),
        "peak_bytes": int(at(a["peak_bytes"], b["peak_bytes"])),
        "trainable_params": int(at(a["trainable_params"], b["trainable_params"])),
    }


def run_check(c: Check, rows: list[str], checkpointing: list[bool]) -> None:
    cpu = c.device == "cpu"
    gc_name = {False: "gradient checkpointing off", True: "gradient checkpointing on"}
    m3 = ("3b-slice", c.s["layers"], 1) if cpu else ("3b", None, None)
    if "3b" in rows:
        for gc in checkpointing:
            r = c.learner(f"3b-{'gc' if gc else 'nogc'}", m3, gc)
            depth = (
                f"{r.get('text_layers', c.s['layers'])} of 36 layers (3b-slice)" if cpu else "full depth (36 layers)"
            )
            c.add(c.rl_row(f"RL step, 3B width, {depth}, {gc_name[gc]}", r))
    if "precision" in rows or "lmhead" in rows:
        r = c.measure("numerics", {**c.model(*m3), "kind": "numerics"})
        if "error" in r:
            for kind in [x for x in ("precision", "lmhead") if x in rows]:
                c.add(
                    {
                        "kind": kind,
                        "label": f"{kind}: not measured",
                        "note": r["error"],
                        "result": r,
                        "failed": not (r.get("oom") or r.get("skipped")),
                    }
                )
        else:
            toks = f"{r['response_tokens']:,} response tokens, B={r['rows']}, L={r['seq_len']}"
            if "precision" in rows:
                c.add(
                    {
                        "kind": "precision",
                        "label": "bf16 vs float32 log-probs (same weights, 3B width)",
                        "note": f"max abs diff {r['max_abs_diff']:.3g}, mean abs diff {r['mean_abs_diff']:.3g}, "
                        f"mean k3 KL {r['k3']:.3g} over {toks}",
                        "result": r,
                    }
                )
            if "lmhead" in rows:
                ch, fu = r["chunked"]["above_start_bytes"], r["full"]["above_start_bytes"]
                c.add(
                    {
                        "kind": "lmhead",
                        "label": "LM head: chunked (response_logprobs) vs full logits, no-grad",
                        "memory": f"{fmt_bytes(ch)} vs {fmt_bytes(fu)}",
                        "note": f"above the weights and inputs; chunked/full {ch / max(fu, 1):.2f}; peak "
                        f"{fmt_bytes(r['chunked']['peak_bytes'])} vs {fmt_bytes(r['full']['peak_bytes'])}; "
                        f"V={r['vocab']:,}, {toks}; max diff {r['chunked_vs_full_max_diff']:.2g}",
                        "result": r,
                    }
                )
    if "7b" in rows:
        la, lb = c.s["depths"]
        shape, target, blocks = ("3b-slice", 36, 1) if cpu else ("7b-slice", 28, 32)
        if not cpu:  # the 3B model is not needed any more: room on the disk
            c.drop_models()
        for gc in checkpointing:
            res = {d: c.learner(f"{shape}-{d}l-{'gc' if gc else 'nogc'}", (shape, d, blocks), gc) for d in (la, lb)}
            if cpu:
                label = f"RL step, 3B width extrapolated to 36 layers from {la} and {lb} (CPU stand-in for 7B)"
            else:
                label = f"RL step, 7B (28 layers) extrapolated from {la} and {lb} layers"
            label += f", {gc_name[gc]}"
            bad = [f"{d} layers: {res[d]['error']}" for d in (la, lb) if "error" in res[d]]
            if bad:
                c.add(c.rl_row(label, {"error": "; ".join(bad), "oom": any(res[d].get("oom") for d in (la, lb))}))
                continue
            note = (
                f"measured {res[la]['step_s']:.2f} / {res[lb]['step_s']:.2f} s, "
                f"{fmt_bytes(res[la]['peak_bytes'])} / {fmt_bytes(res[lb]['peak_bytes'])} at {la} / {lb} layers"
            )
            if res[lb]["step_s"] <= res[la]["step_s"]:  # the layers' cost is below the steps' noise: a line through
                c.add(
                    {
                        "kind": "rl_step",
                        "label": label,
                        "result": res,  # the two would fall with depth
                        "note": note + "; not extrapolated: the deeper slice was not slower (noise above the "
                        "layers' cost; more --steps)",
                    }
                )
                continue
            e = _extrapolate(res[la], res[lb], la, lb, target)
            mem = c.info.get("device_memory")
            if mem and e["peak_bytes"] > mem:
                note += f"; over the card's {fmt_bytes(mem)}: would not fit"
            c.add(c.rl_row(label, e, note=note))
    c.drop_models()


def run_bench_gpu(
    out: str | Path,
    device: str = "cuda",
    force: bool = False,
    rows: str = ",".join(ROWS),
    checkpointing: str = "both",
    verbose: bool = False,
    **overrides,
) -> int:
    out = Path(out)
    md = out / "gpu-check.md"
    if md.is_file() and md.stat().st_size > 0 and not force:
        print(f"gpu: {md} already exists; pass --force to replace it", file=sys.stderr)
        return 2
    wanted = [r.strip() for r in rows.split(",") if r.strip()]
    unknown = [r for r in wanted if r not in ROWS]
    if unknown or not wanted:
        print(f"gpu: unknown rows {unknown or rows!r} (choose from {', '.join(ROWS)})", file=sys.stderr)
        return 2
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("gpu: no CUDA device here (use --device cpu for the CPU run of the same code)", file=sys.stderr)
            return 1
    settings = dict(PROFILES[device])
    settings.update({k: v for k, v in overrides.items() if v is not None})
    if settings["frames"] < 2 or settings["frames"] % 2:
        print("gpu: --frames must be even and >= 2 (temporal patch 2)", file=sys.stderr)
        return 2
    settings["resp_max"] = max(settings["resp_max"], settings["resp_min"])
    out.mkdir(parents=True, exist_ok=True)
    gcs = {"off": [False], "on": [True], "both": [False, True]}[checkpointing]
    c = Check(out, device, settings, verbose)
    try:
        run_check(c, wanted, gcs)
        c.done = True
        c.write()
    finally:
        shutil.rmtree(c.work, ignore_errors=True)
    print(md.read_text(), end="")
    print(f"written to {md} ({time.monotonic() - c.t0:.0f} s)", file=sys.stderr)
    return 1 if any(r.get("failed") for r in c.rows) else 0
