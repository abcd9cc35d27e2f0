"""Builds a small random Qwen2.5-VL that transformers and vLLM both load: config, weights, a BPE tokenizer trained
locally with Qwen's special tokens and chat template, and the image/video processor.

Nothing is downloaded. The defaults (LM 2 layers x 128, vision 2 blocks x 32) start a vLLM engine on 2 CPU cores
in well under a minute; CPU paged attention needs head_dim 64, so hidden_size / num_heads must stay 64.

The random vision tower's outputs barely differ between videos (spread 0.005 around a shared offset of 0.019),
and the LM then ignores the video. ``build_tiny_model`` therefore re-centres the tower's last layer so that video
features are zero-mean with std ~0.02; with that (and the demo-style task) SFT and RL learn from the video
(../shared/ENVIRONMENT.md, "Can a tiny model learn the synthetic task").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

# No import of cluster/: this is a fixture, usable without the training system's config.


@dataclass
class TinySize:
    """The model's family and sizes; the same fields and defaults as cluster.config.TinyModelSection (which the CLI
    passes)."""

    family: str = "qwen2_5_vl"  # or qwen3_vl (FAMILIES)
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    num_kv_heads: int = 1
    intermediate_size: int = 256
    vision_depth: int = 2
    vision_hidden_size: int = 32
    vision_heads: int = 1
    vocab_size: int = 1024  # the tokenizer's BPE vocabulary, before special tokens


SIZE_FIELDS = tuple(f.name for f in fields(TinySize))

# Qwen2.5-VL's special tokens, in Qwen's order (they follow the BPE vocabulary, as in the released tokenizer).
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip

# Qwen2.5-VL's chat layout: default system turn, media placeholders inside the user turn, generation prompt.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in part -%}{{- part['text'] -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def tokenizer_corpus(n_scenes: int = 400, seed: int = 0) -> list[str]:
    """Text the tokenizer learns merges from: the prompts and CoT of the synthetic task in both styles (the demo
    style's fixed option list included), plus the tags."""
    from toy.synthetic import TASKS, SyntheticTask
    from videoqa.prompts import ANSWER_FORMAT, INSTRUCTION

    texts = [INSTRUCTION] + list(ANSWER_FORMAT.values()) + ["You are a helpful assistant.", "system user assistant"]
    for style, count in (("varied", n_scenes), ("demo", n_scenes // 4)):
        task = SyntheticTask(seed, style=style)
        makers = [
            task.direction_mc,
            task.count_numerical,
            task.read_text_ocr,
            task.describe_free_form,
            task.travel_regression,
        ]
        for i in range(count):
            _, d = makers[i % len(TASKS)]()
            texts.append(d["problem"] + " " + " ".join(d.get("options", [])))
            texts.append(
                f"<observation>{d['observation']}</observation><think>{d['think']}</think>"
                f"<answer>{d['answer']}</answer>"
            )
    texts.append(
        "0 1 2 3 4 5 6 7 8 9 10 20 30 40 50 60 70 80 90 100 . , ? ! % : ; ( ) - Yes No <judgement>Yes</judgement>"
    )
    return texts


def build_tokenizer(vocab_size: int, corpus: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus, trainer)
    hf = Qwen2TokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        clean_up_tokenization_spaces=False,
    )
    hf.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    hf.chat_template = CHAT_TEMPLATE
    return hf


def demo_clips(n: int = 16, seed: int = 0, frames: int = 8, size: int = 56) -> list:
    """``n`` demo-style direction clips in memory, (frames, size, size, 3) uint8 each: the shape of what the
    loader feeds the model in the demo (8 frames of 56x56)."""
    from toy.synthetic import SyntheticTask, render_clip

    task = SyntheticTask(seed, frames=frames, size=size, style="demo")
    return [render_clip(task.direction_mc()[0], frames, size) for _ in range(n)]


def video_features(model, processor, clips: list):
    """The vision tower's output for ``clips``: (video tokens of all clips, LM hidden size)."""
    import torch

    inputs = processor.video_processor(videos=clips, do_sample_frames=False, return_tensors="pt")
    visual = model.model.visual  # transformers 5: the tower lives on the inner Qwen2_5_VLModel
    with torch.no_grad():
        out = visual(inputs["pixel_values_videos"].to(visual.dtype), grid_thw=inputs["video_grid_thw"])
    return out.pooler_output  # after the 2x2 patch merger: what replaces the <|video_pad|> embeddings


def recentre_vision_output(model, processor, feature_std: float = 0.02, n_clips: int = 32, seed: int = 0) -> None:
    """Make the video features zero-mean with std ``feature_std``: an affine change of the merger's last Linear
    (the features are that layer's output), measured on demo-style clips. A random tower's features share one
    offset that dwarfs what varies between videos; removing it lets the LM see the differences."""
    import torch

    feats = video_features(model, processor, demo_clips(n_clips, seed=seed))
    mu = feats.mean(0)
    scale = feature_std / float((feats - mu).std())
    merger = model.model.visual.merger
    last = merger.linear_fc2 if hasattr(merger, "linear_fc2") else merger.mlp[2]  # Qwen3-VL / Qwen2.5-VL
    with torch.no_grad():
        last.weight.mul_(scale)
        last.bias.copy_((last.bias - mu) * scale)


FAMILIES = ("qwen2_5_vl", "qwen3_vl")  # the model families this fixture builds (videoqa.families knows them all)


def _mrope_section(head_dim: int, interleaved: bool) -> list[int]:
    """The rotary half-dimension split into temporal/height/width sections (Qwen2.5-VL 16/24/24 of 64; Qwen3-VL,
    interleaved, 24/20/20 of 64)."""
    half = head_dim // 2
    if interleaved:
        hw = half * 5 // 16
        return [half - 2 * hw, hw, hw]
    return [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]


def _text_config(size, ids: dict, vocab: int, interleaved: bool) -> dict:
    head_dim = size.hidden_size // size.num_heads
    rope = {"rope_type": "default", "mrope_section": _mrope_section(head_dim, interleaved), "rope_theta": 1_000_000.0}
    if interleaved:
        rope["mrope_interleaved"] = True
    return dict(
        vocab_size=vocab,
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        num_key_value_heads=size.num_kv_heads,
        max_position_embeddings=4096,
        rope_parameters=rope,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )


def _model_and_processor(family: str, size, tokenizer, ids: dict):
    """The random model (float32) and its processor for ``family``."""
    import transformers as tf

    vocab = len(tokenizer)  # unpadded, so that every id the random model samples is a real token
    media_ids = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    vision = dict(
        depth=size.vision_depth,
        hidden_size=size.vision_hidden_size,
        intermediate_size=size.vision_hidden_size * 2,
        num_heads=size.vision_heads,
        out_hidden_size=size.hidden_size,
    )
    if family == "qwen2_5_vl":
        text = {**_text_config(size, ids, vocab, interleaved=False), "max_window_layers": size.num_layers}
        config = tf.Qwen2_5_VLConfig(
            text_config=text,
            vision_config=dict(
                **vision, fullatt_block_indexes=[size.vision_depth - 1], window_size=112, tokens_per_second=2
            ),
            **media_ids,
            tie_word_embeddings=False,
        )
        config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
        model = tf.Qwen2_5_VLForConditionalGeneration(config)
    elif family == "qwen3_vl":  # patch 16, DeepStack features from the first block, a learned 16x16 position grid
        config = tf.Qwen3VLConfig(
            text_config={
                **_text_config(size, ids, vocab, interleaved=True),
                "head_dim": size.hidden_size // size.num_heads,
            },  # Qwen3's default is 128
            vision_config=dict(**vision, patch_size=16, num_position_embeddings=256, deepstack_visual_indexes=[0]),
            **media_ids,
            tie_word_embeddings=False,
        )
        config.architectures = ["Qwen3VLForConditionalGeneration"]
        model = tf.Qwen3VLForConditionalGeneration(config)
    else:
        raise ValueError(f"unknown model family {family!r}: one of {', '.join(FAMILIES)}")
    return model.float(), build_processor(family, tokenizer)


def build_processor(family: str, tokenizer):
    """The image/video processor of a random ``family`` model (the tiny ones and the real-width slices). Its own
    pixel bounds are wide: our loader sizes frames (multiples of the family's patch x merge within the configured
    budget) before it sees them, so it does not resample."""
    import transformers as tf

    if family == "qwen3_vl":
        # Images and videos normalised with 0.5/0.5 as the released checkpoints' processors do (vLLM normalises
        # videos with the image processor's statistics, transformers with the video processor's: they must agree).
        stats = dict(image_mean=[0.5] * 3, image_std=[0.5] * 3)
        bounds = {"shortest_edge": 32 * 32, "longest_edge": 32 * 32 * 1280}
        return tf.Qwen3VLProcessor(
            image_processor=tf.Qwen2VLImageProcessor(patch_size=16, size=bounds, **stats),
            video_processor=tf.Qwen3VLVideoProcessor(size=bounds, cap_pixels_per_frame=False, **stats),
            tokenizer=tokenizer,
            chat_template=CHAT_TEMPLATE,
        )
    bounds = dict(min_pixels=28 * 28, max_pixels=28 * 28 * 1280)
    return tf.Qwen2_5_VLProcessor(
        image_processor=tf.Qwen2VLImageProcessor(**bounds),
        video_processor=tf.Qwen2VLVideoProcessor(**bounds, cap_pixels_per_frame=False),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_model(
    out: str | Path,
    size=None,
    seed: int = 0,
    recentre: bool = True,
    feature_std: float = 0.02,
    family: str | None = None,
) -> Path:
    """Writes a loadable model folder to ``out`` and returns its path. ``size``: any object with ``TinySize``'s
    fields (a ``TinySize``, or the config's ``TinyModelSection``); None is the defaults. ``family``: overrides
    ``size.family`` (Qwen2.5-VL by default). ``recentre``: re-centre the vision tower's output
    (``recentre_vision_output``) before saving."""
    import torch

    size = size or TinySize()
    family = family or size.family
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(size.vocab_size, tokenizer_corpus(seed=seed))
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    torch.manual_seed(seed)
    model, processor = _model_and_processor(family, size, tokenizer, ids)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    if recentre:  # before saving: the processor is needed to feed clips through the tower
        recentre_vision_output(model, processor, feature_std, seed=seed)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    note = {
        "seed": seed,
        **{k: getattr(size, k) for k in SIZE_FIELDS},
        "family": family,
        "recentre": recentre,
        "feature_std": feature_std if recentre else None,
    }
    (out / "videop2r_tiny.json").write_text(json.dumps(note, indent=1))
    return out
