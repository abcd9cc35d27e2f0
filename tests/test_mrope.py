"""M-RoPE positions by hand (the convention vLLM and the original Qwen2.5-VL use)."""

import pytest
import torch

from learner.mrope import mrope_positions

IMG, VID = 90, 91


def test_text_only_is_1d():
    pos, delta = mrope_positions([1, 2, 3], image_token_id=IMG, video_token_id=VID)
    assert pos.tolist() == [[0, 1, 2]] * 3 and delta == 0


def test_video_block_then_text_resumes_after_the_largest_position():
    # 2 text tokens, a video of grid (t=3, h=4, w=2) -> merged (3, 2, 1) = 6 tokens, then 2 text tokens.
    # second_per_grid_t 0.5 x tokens_per_second 4 -> temporal step 2. Text resumes at max(6) + 1 = 7.
    ids = [1, 2] + [VID] * 6 + [3, 4]
    pos, delta = mrope_positions(
        ids,
        video_grid_thw=[[3, 4, 2]],
        second_per_grid_ts=[0.5],
        image_token_id=IMG,
        video_token_id=VID,
        spatial_merge_size=2,
        tokens_per_second=4,
    )
    assert pos.tolist() == [
        [0, 1, 2, 2, 4, 4, 6, 6, 7, 8],
        [0, 1, 2, 3, 2, 3, 2, 3, 7, 8],
        [0, 1, 2, 2, 2, 2, 2, 2, 7, 8],
    ]
    assert delta == 9 - 10


def test_image_then_video_in_order():
    ids = [IMG] * 4 + [5] + [VID] * 4
    pos, _ = mrope_positions(
        ids,
        image_grid_thw=[[1, 4, 4]],
        video_grid_thw=[[2, 2, 4]],
        second_per_grid_ts=[1.0],
        image_token_id=IMG,
        video_token_id=VID,
        spatial_merge_size=2,
        tokens_per_second=1,
    )
    assert pos.tolist() == [[0, 0, 0, 0, 2, 3, 3, 4, 4], [0, 0, 1, 1, 2, 3, 3, 3, 3], [0, 1, 0, 1, 2, 3, 4, 3, 4]]
    assert pos.dtype == torch.long


def test_token_count_must_match_the_grid():
    with pytest.raises(ValueError, match="expected 4 vision tokens"):
        mrope_positions([VID] * 3, video_grid_thw=[[2, 2, 4]], image_token_id=IMG, video_token_id=VID)
