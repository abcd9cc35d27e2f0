"""The frozen vision tower's output, computed once per prompt and reused by its G rollouts.

A prompt's G rollouts share one video, and one RL update scores each rollout several times (the old policy, the
KL reference, every minibatch and epoch). With the tower frozen (``learner.freeze``, the default) its output for
that video is the same every time, so an update computes it once per prompt and hands it to transformers as
``mm_encoder_outputs`` (the model then skips its tower and scatters these features into the placeholder tokens, as
it does with its own). Measured on an H200 (docs/gpu-check.md): most of a 3B RL step was this fixed cost.

Valid only while the tower's weights do not change within the update and the reference model's tower equals the
policy's: both hold when the tower is frozen from the start (the reference is the policy's copy). When the tower
trains, the learner does not use this.
"""

from __future__ import annotations

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

# modality of transformers' mm_encoder_outputs -> (pixel key, grid key, the model's feature method)
MODALITIES = {
    "video": ("pixel_values_videos", "video_grid_thw", "get_video_features"),
    "image": ("pixel_values", "image_grid_thw", "get_image_features"),
}
PIXEL_KEYS = tuple(pix for pix, _, _ in MODALITIES.values())


def tower_frozen(hf_model) -> bool:
    """True when no parameter of the model's vision tower trains."""
    return not any(p.requires_grad for p in hf_model.model.visual.parameters())


class SharedVisionFeatures:
    """Per-update store of each prompt's vision features, keyed by the prompt's processor output (the dict that
    ``learner.batch.prompt_inputs`` returned, shared by the prompt's rows). The store keeps a reference to each
    dict, so that no other dict can take its ``id`` while the store lives."""

    def __init__(self):
        self._kept: dict[tuple[int, str], tuple[dict, type, list]] = {}
        self.tower_calls = 0  # prompts whose features were computed (the test counts these against the tower)

    def prepare(self, hf_model, prompts: list[dict]) -> None:
        """Computes every prompt's features now, in the order given, one tower call each. Under ZeRO-3 the frozen
        tower's weights are partitioned too, and each call gathers them with every rank: all ranks must call it as
        often and in the same order (each holds as many prompts), not whenever a micro-batch first meets a prompt,
        which differs between ranks."""
        self.encoder_outputs(hf_model, list({id(p): p for p in prompts}.values()))

    def encoder_outputs(self, hf_model, prompts: list[dict]) -> dict:
        """transformers' ``mm_encoder_outputs`` for a batch whose rows have these prompts, in row order. Qwen3-VL's
        towers also return DeepStack features (one set per injection layer), kept and handed on the same way."""
        out = {}
        for modality, (pix, grid, method) in MODALITIES.items():
            per_media: list[tuple] = []  # (merged features, DeepStack features per layer) of each row's medium
            kind = BaseModelOutputWithPooling
            for p in prompts:
                if pix not in p:
                    continue
                key = (id(p), modality)
                if key not in self._kept:
                    with torch.no_grad():
                        res = getattr(hf_model.model, method)(
                            p[pix].to(hf_model.device), p[grid].to(hf_model.device), return_dict=True
                        )
                    deep = getattr(res, "deepstack_features", None)
                    feats = [
                        (f.detach(), None if deep is None else tuple(layer[i].detach() for layer in deep))
                        for i, f in enumerate(res.pooler_output)
                    ]
                    self._kept[key] = (p, type(res), feats)
                    self.tower_calls += 1
                _, kind, feats = self._kept[key]
                per_media.extend(feats)
            if per_media:
                merged = tuple(f for f, _ in per_media)
                if per_media[0][1] is None:
                    out[modality] = BaseModelOutputWithPooling(pooler_output=merged)
                else:  # layer-major, as the tower returns them: [layer][medium]
                    layers = len(per_media[0][1])
                    out[modality] = kind(
                        pooler_output=merged,
                        deepstack_features=[tuple(d[k] for _, d in per_media) for k in range(layers)],
                    )
        return out
