"""The 3-D rotary positions (M-RoPE) of Qwen2.5-VL and Qwen3-VL for one token sequence, as vLLM and the original
Qwen code compute them.

Text tokens advance all three axes by 1. A vision block of (t, h, w) merged patches gets temporal positions
``floor(i_t * second_per_grid_t * tokens_per_second)`` and height/width positions ``i_h``, ``i_w``, all offset by the
start position; text after the block resumes at the block's largest position + 1.

transformers 5.19 resumes text after a video at ``start + max(h, w)`` instead, which differs from vLLM (and from
transformers 4) as soon as a video has two or more temporal patches. The learner passes these positions explicitly,
so that its log-probs are those of the tokens vLLM sampled, under the same positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from videoqa.families import family_of_config


def mrope_positions(
    input_ids: Sequence[int],
    image_grid_thw: Sequence[Sequence[int]] = (),
    video_grid_thw: Sequence[Sequence[int]] = (),
    second_per_grid_ts: Sequence[float] = (),
    *,
    image_token_id: int,
    video_token_id: int,
    spatial_merge_size: int = 2,
    tokens_per_second: float = 2.0,
) -> tuple[torch.Tensor, int]:
    """(positions of shape (3, len(input_ids)), rope delta = max position + 1 - length)."""
    ids = list(input_ids)
    images, videos = (
        iter([list(map(int, g)) for g in image_grid_thw]),
        iter([list(map(int, g)) for g in video_grid_thw]),
    )
    seconds = iter(list(second_per_grid_ts))
    parts: list[torch.Tensor] = []
    next_pos, i = 0, 0
    while i < len(ids):
        tok = ids[i]
        if tok in (image_token_id, video_token_id):
            is_video = tok == video_token_id
            t, h, w = next(videos) if is_video else next(images)
            h, w = h // spatial_merge_size, w // spatial_merge_size
            factor = float(next(seconds, 1.0)) * tokens_per_second if is_video else 1.0
            ti = torch.arange(t).view(-1, 1, 1).expand(t, h, w)
            if factor != 1.0:
                ti = (ti.double() * factor).long()
            hi = torch.arange(h).view(1, -1, 1).expand(t, h, w)
            wi = torch.arange(w).view(1, 1, -1).expand(t, h, w)
            block = torch.stack([ti.reshape(-1), hi.reshape(-1), wi.reshape(-1)]) + next_pos
            n = t * h * w
            if ids[i : i + n] != [tok] * n:
                raise ValueError(
                    f"expected {n} vision tokens at position {i} for grid {(t, h * spatial_merge_size, w * spatial_merge_size)}"
                )
            parts.append(block)
            next_pos = int(block.max()) + 1
            i += n
        else:
            j = i
            while j < len(ids) and ids[j] not in (image_token_id, video_token_id):
                j += 1
            parts.append(torch.arange(next_pos, next_pos + j - i).view(1, -1).expand(3, -1))
            next_pos += j - i
            i = j
    pos = torch.cat(parts, dim=1) if parts else torch.zeros(3, 0, dtype=torch.long)
    return pos, (int(pos.max()) + 1 - len(ids)) if len(ids) else 0


def model_positions(config, input_ids: Sequence[int], processor_outputs: dict) -> torch.Tensor:
    """``mrope_positions`` for a model ``config`` and the processor's outputs of one sample: (3, 1, L).

    Qwen3-VL (a family with timestamps) writes ``<t seconds>`` text before each temporal patch of a video, so each
    patch is a vision block of its own, (1, h, w), with temporal position 0 at its start (vLLM's and
    transformers' Qwen3-VL positions); Qwen2.5-VL's video is one (t, h, w) block with time-scaled positions."""
    videos = processor_outputs.get("video_grid_thw", torch.zeros(0, 3)).tolist()
    seconds = [float(x) for x in processor_outputs.get("second_per_grid_ts", [])]
    if family_of_config(config).timestamps:
        videos = [[1, h, w] for t, h, w in videos for _ in range(t)]
        seconds = []
    pos, _ = mrope_positions(
        input_ids,
        processor_outputs.get("image_grid_thw", torch.zeros(0, 3)).tolist(),
        videos,
        seconds,
        image_token_id=config.image_token_id,
        video_token_id=config.video_token_id,
        spatial_merge_size=config.vision_config.spatial_merge_size,
        tokens_per_second=getattr(config.vision_config, "tokens_per_second", 1.0),
    )
    return pos.unsqueeze(1)
