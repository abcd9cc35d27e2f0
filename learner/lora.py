"""LoRA adapters on the language model (``learner.lora``), with peft: applying them, the reference without a
second model (the adapters switched off), and the weights a rollout worker needs after an update.

Names: peft wraps the model (``base_model.model.<hf name>``) and each adapted Linear keeps its weight as
``<module>.base_layer.weight`` beside ``<module>.lora_A.default.weight`` and ``lora_B``. vLLM and the checkpoint
use the transformers names, so every name leaving the learner is mapped back (``hf_name``).

The merged weight of an adapted layer is W + s * B @ A with s = alpha / rank (peft's ``get_delta_weight`` for a
plain Linear), computed beside the model, never written into it: the learner keeps training the adapters.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING
from collections.abc import Iterator

if TYPE_CHECKING:  # torch itself is imported by whoever passes the tensors
    import torch

PEFT_PREFIX = "base_model.model."


def apply_lora(model, rank: int, alpha: float, dropout: float, target_modules: str):
    """``model`` wrapped by peft with LoRA adapters (``rank`` > 0) on the modules whose full name matches
    ``target_modules`` (a regex; the family's default is ``ModelFamily.lora_targets``); every other weight is
    frozen, the adapters train. B starts at zero (peft's default), so the wrapped model computes what ``model``
    did until the first update."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, bias="none")
    wrapped = get_peft_model(model, config, autocast_adapter_dtype=False)  # the adapters in the model's dtype
    if not any(True for _ in adapted_layers(wrapped)):
        raise ValueError(f"learner.lora.target_modules {target_modules!r} matches no module of the model")
    return wrapped


def is_lora(model) -> bool:
    return hasattr(model, "peft_config")


def hf_name(name: str) -> str | None:
    """The transformers name of a peft parameter; None for an adapter's own (lora_A / lora_B)."""
    if ".lora_" in name:
        return None
    return name.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")


def base_model(model):
    """The transformers model inside a peft wrapper (the model itself without one)."""
    return model.get_base_model() if is_lora(model) else model


def adapted_layers(model) -> Iterator[tuple[str, torch.nn.Module]]:
    """(transformers name of the layer's weight, the peft layer) for every adapted Linear."""
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            yield name.removeprefix(PEFT_PREFIX) + ".weight", module


def merged_weight(layer) -> torch.Tensor:
    """W + s * B @ A of one adapted Linear (float32 while computing, then the weight's dtype)."""
    w = layer.base_layer.weight
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    delta = (b.float() @ a.float()) * layer.scaling["default"]
    return (w.float() + delta).to(w.dtype)


def lora_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    """The adapters' own parameters (what a LoRA run trains and an adapter-only sync sends), peft names."""
    return [(n, p) for n, p in model.named_parameters() if ".lora_" in n]


@contextmanager
def adapters_off(model):
    """The base model's forward for the duration (the KL reference of a LoRA run: no second copy)."""
    with model.disable_adapter() if is_lora(model) else nullcontext():
        yield
