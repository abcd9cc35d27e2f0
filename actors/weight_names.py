"""Which parameter names a rollout engine accepts: the names in the checkpoint it was started from, written either
as that checkpoint writes them or as transformers 5 writes Qwen2.5-VL names (``model.language_model.*``,
``model.visual.*``). Reads only safetensors headers."""

from __future__ import annotations

import re
from pathlib import Path

_V4_TEXT = re.compile(r"^model\.(?!language_model\.|visual\.)")
_V4_VISION = re.compile(r"^visual\.")


def to_transformers5(name: str) -> str:
    """Qwen2.5-VL names of transformers 4 checkpoints (``model.layers.*``, ``visual.*``) in transformers 5 form."""
    if _V4_VISION.match(name):
        return "model." + name
    return _V4_TEXT.sub("model.language_model.", name)


def checkpoint_names(model_dir: str | Path) -> set[str]:
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}: the rollout engine needs a safetensors checkpoint")
    names: set[str] = set()
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            names.update(st.keys())
    return names


def accepted_names(model_dir: str | Path) -> set[str]:
    names = checkpoint_names(model_dir)
    return names | {to_transformers5(n) for n in names}


def check_names(names: list[str], accepted: set[str]) -> None:
    """A ``ValueError`` naming the first unknown parameter (and how many there are)."""
    unknown = [n for n in names if n not in accepted]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise ValueError(
            f"unknown parameter name {unknown[0]!r}{more}: the rollout engine's model has no such weight; "
            "send Hugging Face names as transformers writes them for this checkpoint"
        )


# a peft adapter tensor as get_peft_model_state_dict names it (adapter_model.safetensors)
_ADAPTER_TENSOR = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_[AB]\.weight$")


def check_plan_names(plan, accepted: set[str]) -> None:
    """``check_names`` for a weight plan (``actors.weight_transport.WeightPlan``). An adapter's tensors are checked
    by the weight each one adapts: an adapter for modules the served model lacks fails before anything moves."""
    names = plan.names
    if plan.adapter is not None:
        bad = [n for n in names if not _ADAPTER_TENSOR.match(n)]
        if bad:
            raise ValueError(
                f"{bad[0]!r} is not a LoRA adapter tensor (base_model.model.<module>.lora_A.weight or "
                "lora_B.weight, as peft saves them)"
            )
        names = [_ADAPTER_TENSOR.match(n)["module"] + ".weight" for n in names]
    check_names(names, accepted)
