"""Builds a small random Qwen2.5-VL that transformers and vLLM both load: config, weights, a BPE tokenizer trained
locally with Qwen's special tokens and chat template, and the image/video processor.

Nothing is downloaded. The defaults (LM 2 layers x 128, vision 2 blocks x 32) start a vLLM engine on 2 CPU cores
in well under a minute; CPU paged attention needs head_dim 64, so hidden_size / num_heads must stay 64.
"""

from __future__ import annotations

import json
from pathlib import Path

from cluster.config import TinyModelSection

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
    """Text the tokenizer learns merges from: the prompts and CoT of the synthetic task, plus the tags."""
    from videoqa.prompts import INSTRUCTION, ANSWER_FORMAT
    from videoqa.synthetic import TASKS, SyntheticTask

    task = SyntheticTask(seed)
    makers = [task.direction_mc, task.count_numerical, task.read_text_ocr, task.describe_free_form, task.travel_regression]
    texts = [INSTRUCTION] + list(ANSWER_FORMAT.values()) + ["You are a helpful assistant.", "system user assistant"]
    for i in range(n_scenes):
        _, d = makers[i % len(TASKS)]()
        texts.append(d["problem"] + " " + " ".join(d.get("options", [])))
        texts.append(f"<observation>{d['observation']}</observation><think>{d['think']}</think><answer>{d['answer']}</answer>")
    texts.append("0 1 2 3 4 5 6 7 8 9 10 20 30 40 50 60 70 80 90 100 . , ? ! % : ; ( ) - Yes No <judgement>Yes</judgement>")
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


def build_tiny_model(out: str | Path, size: TinyModelSection = TinyModelSection(), seed: int = 0) -> Path:
    """Writes a loadable Qwen2.5-VL folder to ``out`` and returns its path."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(size.vocab_size, tokenizer_corpus(seed=seed))
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab = len(tokenizer)  # unpadded, so that every id the random model samples is a real token
    head_dim = size.hidden_size // size.num_heads
    half = head_dim // 2  # M-RoPE splits the rotary half-dimension into temporal/height/width sections
    mrope = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab,
            hidden_size=size.hidden_size,
            intermediate_size=size.intermediate_size,
            num_hidden_layers=size.num_layers,
            num_attention_heads=size.num_heads,
            num_key_value_heads=size.num_kv_heads,
            max_position_embeddings=4096,
            max_window_layers=size.num_layers,
            rope_parameters={"rope_type": "default", "mrope_section": mrope, "rope_theta": 1_000_000.0},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
            tie_word_embeddings=False,
        ),
        vision_config=dict(
            depth=size.vision_depth,
            hidden_size=size.vision_hidden_size,
            intermediate_size=size.vision_hidden_size * 2,
            num_heads=size.vision_heads,
            out_hidden_size=size.hidden_size,
            fullatt_block_indexes=[size.vision_depth - 1],
            window_size=112,
            tokens_per_second=2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out)
    # Our loader sizes frames (multiples of 28 within the configured budget) before the processor sees them, so
    # the processor's own bounds are wide and it does not resample.
    pixel_bounds = dict(min_pixels=28 * 28, max_pixels=28 * 28 * 1280)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixel_bounds),
        video_processor=Qwen2VLVideoProcessor(**pixel_bounds, cap_pixels_per_frame=False),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    (out / "videop2r_tiny.json").write_text(json.dumps({"seed": seed, **size.model_dump()}, indent=1))
    return out
