"""A LoRA adapter received by a rollout engine (``learner.lora.sync=adapter``), written where vLLM loads it from.

vLLM takes adapters by path (``LoRARequest``). Each engine writes the ones it receives into a private folder on
its own host (never the shared volume: the adapter is this engine's copy), one subfolder per weight version, and
keeps only the newest: the rollout worker switches to it and drops the old one from the engine.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path
from collections.abc import Iterable

import torch

_ROOT: Path | None = None


def adapter_root() -> Path:
    """This process's adapter folder (made once, removed when the process exits)."""
    global _ROOT
    if _ROOT is None:
        _ROOT = Path(tempfile.mkdtemp(prefix="videop2r-adapters-"))
        atexit.register(shutil.rmtree, _ROOT, True)
    return _ROOT


def write_adapter(version: int, config: dict, tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """The adapter of weight ``version`` as peft saves one (``adapter_config.json``, ``adapter_model.safetensors``);
    older versions' folders go. Returns the folder."""
    from safetensors.torch import save_file

    root = adapter_root()
    # received tensors are views into the transfer's buckets: copies, which safetensors can write
    state = {name: t.to("cpu", copy=True).contiguous() for name, t in tensors}
    folder = root / f"v{version}"
    shutil.rmtree(folder, ignore_errors=True)  # a retried sync of the same version
    folder.mkdir()
    save_file(state, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=1))
    for old in root.iterdir():
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)
    return str(folder)
