"""Random models with the released widths of Qwen2.5-VL-3B / -7B and Qwen3-VL-8B, cut only in depth
(``--shape 3b-slice``, ``qwen3-vl-8b-slice``).

Everything a layer's shape depends on is the released checkpoint's (``config.json`` of Qwen2.5-VL-3B/7B-Instruct):
vocabulary, hidden and head sizes, grouped-query heads, intermediate widths, rope theta and the M-RoPE sections,
the vision tower's widths, patch/merge/temporal sizes, window size and full-attention blocks, and tied (3B) or
untied (7B) embeddings. A slice keeps ``text_layers`` decoder layers and ``vision_blocks`` vision blocks, the last of
which is a full-attention block as in the released pattern (window blocks, then one full one: blocks 7, 15, 23, 31
of 32); full depth (``"3b"``, ``"7b"``) is for the GPU check. The Qwen3-VL-8B slice keeps its patch 16, learned
position grid, interleaved M-RoPE and DeepStack mergers (as many as fit the cut: one per decoder layer kept, at
most the released 3, fed from the vision blocks before the last).

The tokenizer is the tiny model's (a BPE trained locally, Qwen's special tokens and chat template), so its ids are
few; the embedding rows above them are padding, as the released embeddings are padded above their 151,665 tokens.
A random model samples those rows: generate with ``allowed_token_ids=text_token_ids(tokenizer)``.
"""

from __future__ import annotations

import json
from pathlib import Path

# From the released config.json files (Qwen/Qwen2.5-VL-3B-Instruct, Qwen/Qwen2.5-VL-7B-Instruct).
TEXT = {
    "3b": dict(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        max_window_layers=70,
        tie_word_embeddings=True,
    ),
    "7b": dict(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_window_layers=28,
        tie_word_embeddings=False,
    ),
}
ROPE = {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1_000_000.0}
VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    tokens_per_second=2,
    hidden_act="silu",
)
# From the released config.json of Qwen/Qwen3-VL-8B-Instruct.
QWEN3_VL_TEXT = {
    "qwen3-vl-8b": dict(
        vocab_size=151936,
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        tie_word_embeddings=False,
    )
}
QWEN3_VL_ROPE = {
    "rope_type": "default",
    "mrope_section": [24, 20, 20],
    "mrope_interleaved": True,
    "rope_theta": 5_000_000.0,
}
QWEN3_VL_VISION = dict(
    depth=27,
    hidden_size=1152,
    intermediate_size=4304,
    num_heads=16,
    patch_size=16,
    spatial_merge_size=2,
    temporal_patch_size=2,
    num_position_embeddings=2304,
    deepstack_visual_indexes=[8, 16, 24],
    hidden_act="gelu_pytorch_tanh",
)
SHAPES = ("3b-slice", "7b-slice", "3b", "7b", "qwen3-vl-8b-slice", "qwen3-vl-8b")
SLICE = {"text_layers": 2, "vision_blocks": 4}  # the default cut: 2 decoder layers, 3 window blocks + 1 full one


def shape_config(shape: str, ids: dict[str, int], text_layers: int | None = None, vision_blocks: int | None = None):
    """The config of ``shape`` (``3b``, ``7b``, ``qwen3-vl-8b``, or their ``-slice``); ``ids``: the special tokens'
    ids. A slice keeps ``text_layers`` / ``vision_blocks`` (default ``SLICE``); full depth keeps the released ones."""
    from transformers import Qwen2_5_VLConfig

    base, sliced = shape.removesuffix("-slice"), shape.endswith("-slice")
    if base not in TEXT and base not in QWEN3_VL_TEXT or shape not in SHAPES:
        raise ValueError(f"unknown model shape {shape!r} (one of {', '.join(SHAPES)})")
    if base in QWEN3_VL_TEXT:
        return _qwen3_vl_config(base, sliced, ids, text_layers, vision_blocks)
    text = dict(TEXT[base])
    vision = dict(VISION, out_hidden_size=text["hidden_size"])
    text["num_hidden_layers"], vision["depth"] = _depths(
        sliced, text_layers, vision_blocks, text["num_hidden_layers"], vision["depth"]
    )
    if sliced:
        depth = vision["depth"]
        vision["fullatt_block_indexes"] = [i for i in VISION["fullatt_block_indexes"] if i < depth - 1] + [depth - 1]
    return _config(Qwen2_5_VLConfig, "Qwen2_5_VLForConditionalGeneration", text, ROPE, vision, ids, 128000)


def _config(cls, architecture: str, text: dict, rope: dict, vision: dict, ids: dict[str, int], positions: int):
    config = cls(
        text_config=dict(
            text,
            max_position_embeddings=positions,
            rope_parameters=dict(rope),
            rms_norm_eps=1e-6,
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=text["tie_word_embeddings"],
    )
    config.architectures = [architecture]
    return config


def _depths(sliced: bool, text_layers: int | None, vision_blocks: int | None, text: int, vision: int):
    if not sliced:
        return text, vision
    text = SLICE["text_layers"] if text_layers is None else text_layers
    vision = SLICE["vision_blocks"] if vision_blocks is None else vision_blocks
    if text < 1 or vision < 1:
        raise ValueError(f"a slice needs at least 1 decoder layer and 1 vision block (got {text} and {vision})")
    return text, vision


def _qwen3_vl_config(base: str, sliced: bool, ids: dict[str, int], text_layers, vision_blocks):
    from transformers import Qwen3VLConfig

    text = dict(QWEN3_VL_TEXT[base])
    vision = dict(QWEN3_VL_VISION, out_hidden_size=text["hidden_size"])
    text["num_hidden_layers"], vision["depth"] = _depths(
        sliced, text_layers, vision_blocks, text["num_hidden_layers"], vision["depth"]
    )
    if sliced:  # DeepStack: one merger per kept decoder layer (at most 3), from the blocks before the last
        n = min(len(QWEN3_VL_VISION["deepstack_visual_indexes"]), text["num_hidden_layers"], vision["depth"] - 1)
        vision["deepstack_visual_indexes"] = list(range(vision["depth"] - 1 - n, vision["depth"] - 1))
    return _config(Qwen3VLConfig, "Qwen3VLForConditionalGeneration", text, QWEN3_VL_ROPE, vision, ids, 262144)


def text_token_ids(tokenizer) -> list[int]:
    """The ids a random shaped model may sample: the tokenizer's own, less the media placeholders (a sampled
    ``<|video_pad|>`` has no video behind it)."""
    media = {tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_pad|>")}
    return [i for i in range(len(tokenizer)) if i not in media]


def build_shaped_model(
    out: str | Path,
    shape: str = "3b-slice",
    seed: int = 0,
    text_layers: int | None = None,
    vision_blocks: int | None = None,
    dtype: str = "float32",
    device: str = "cpu",
) -> Path:
    """Writes a loadable random model of ``shape`` to ``out`` (weights in ``dtype``, initialised on ``device``: a
    full-depth 7B is built on a GPU in bfloat16) and returns its path."""
    import torch
    import transformers as tf

    from toy.tiny_model import SPECIAL_TOKENS, TinySize, build_processor, build_tokenizer, tokenizer_corpus

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(TinySize().vocab_size, tokenizer_corpus(seed=seed))
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = shape_config(shape, ids, text_layers, vision_blocks)
    torch.manual_seed(seed)
    with torch.device(device):
        model = getattr(tf, config.architectures[0])(config).to(getattr(torch, dtype))
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    processor = build_processor(config.model_type, tokenizer)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    note = {
        "shape": shape,
        "seed": seed,
        "text_layers": config.text_config.num_hidden_layers,
        "vision_blocks": config.vision_config.depth,
        "dtype": dtype,
        "params": sum(p.numel() for p in model.parameters()),
    }
    (out / "videop2r_shape.json").write_text(json.dumps(note, indent=1))
    return out
