"""The tiny Qwen2.5-VL loads in transformers and generates from a real decoded video."""

import json

import pytest
import torch

from learner.tiny_model import SPECIAL_TOKENS
from videoqa.loader import MediaLoader
from videoqa.prompts import chat_messages
from videoqa.schema import load_samples
from videoqa.video import FrameSampling


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(tiny_model_dir)


def test_files_and_special_tokens(tiny_model_dir, hf):
    model, processor = hf
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert cfg["model_type"] == "qwen2_5_vl"
    tok = processor.tokenizer
    for t in SPECIAL_TOKENS:
        ids = tok.encode(t, add_special_tokens=False)
        assert len(ids) == 1, t  # each special token is one id
    assert model.config.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.text_config.hidden_size // model.config.text_config.num_attention_heads == 64
    text = "<observation>Based on the question, I need to notice the red square.</observation><answer>B</answer>"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 2_000_000, n_params


def test_chat_template_layout(hf, synthetic_dir):
    _, processor = hf
    s = load_samples(synthetic_dir / "train.json")[0]
    prompt = processor.apply_chat_template(chat_messages(s), tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Which direction" in prompt  # video, then text
    assert prompt.count("<|video_pad|>") == 1 and prompt.endswith("<|im_start|>assistant\n")


def test_generates_from_video_in_transformers(hf, synthetic_dir):
    model, processor = hf
    s = next(x for x in load_samples(synthetic_dir / "train.json") if x.data_type == "video")
    item = next(MediaLoader(synthetic_dir, FrameSampling(nframes=8, max_pixels=3136))([s]))
    prompt = processor.apply_chat_template(chat_messages(s), tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[prompt], videos=[item.video.frames], video_metadata=[item.video.metadata()],
                       do_sample_frames=False, return_tensors="pt")
    # 8 frames of 56x56 -> grid (4, 4, 4) -> 64 patches -> 16 video tokens after the 2x2 merge
    assert inputs["video_grid_thw"].tolist() == [[4, 4, 4]]
    video_id = model.config.video_token_id
    assert int((inputs["input_ids"] == video_id).sum()) == 16
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 8 or out[0, -1].item() in model.generation_config.eos_token_id
