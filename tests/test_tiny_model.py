"""The tiny Qwen2.5-VL loads in transformers, generates from a real decoded video, and its video features are
centred (so that a model trained from it can use them)."""

import json
from dataclasses import asdict

import pytest
import torch

from toy.tiny_model import SPECIAL_TOKENS, TinySize, build_tiny_model, demo_clips, video_features
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
    inputs = processor(
        text=[prompt],
        videos=[item.video.frames],
        video_metadata=[item.video.metadata()],
        do_sample_frames=False,
        return_tensors="pt",
    )
    # 8 frames of 56x56 -> grid (4, 4, 4) -> 64 patches -> 16 video tokens after the 2x2 merge
    assert inputs["video_grid_thw"].tolist() == [[4, 4, 4]]
    video_id = model.config.video_token_id
    assert int((inputs["input_ids"] == video_id).sum()) == 16
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 8 or out[0, -1].item() in model.generation_config.eos_token_id


def _feature_stats(model_dir):
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    # new clips: the build re-centred on clips drawn with the model's seed (0), these come from another seed
    feats = video_features(model, AutoProcessor.from_pretrained(model_dir), demo_clips(32, seed=1234))
    assert feats.shape == (32 * 16, model.config.text_config.hidden_size)  # 16 video tokens per 8x56x56 clip
    mu = feats.mean(0)
    return float(mu.abs().max()), float((feats - mu).std())


def test_video_features_are_centred(tiny_model_dir):
    """The LM only learns from the video when the features vary around zero rather than around a shared offset."""
    max_mean, std = _feature_stats(tiny_model_dir)
    assert max_mean < 0.01 and 0.01 <= std <= 0.04, (max_mean, std)
    note = json.loads((tiny_model_dir / "videop2r_tiny.json").read_text())
    assert note["recentre"] is True and note["feature_std"] == 0.02 and note["hidden_size"] == 128


def test_without_recentring_features_are_offset(tmp_path):
    max_mean, std = _feature_stats(build_tiny_model(tmp_path / "raw", seed=0, recentre=False))
    assert not (max_mean < 0.01 and 0.01 <= std <= 0.04), (max_mean, std)


def test_size_from_any_object_with_the_fields(tmp_path):
    """The CLI passes the config's pydantic section; scripts pass a TinySize. Both describe the same model."""
    from cluster.config import TinyModelSection

    assert TinyModelSection().model_dump() == asdict(TinySize())  # the same fields and defaults
    a = build_tiny_model(tmp_path / "a", TinySize(num_layers=1, vocab_size=600), recentre=False)
    b = build_tiny_model(tmp_path / "b", TinyModelSection(num_layers=1, vocab_size=600), recentre=False)
    for name in ("config.json", "videop2r_tiny.json", "tokenizer.json"):
        assert (a / name).read_text() == (b / name).read_text(), name


def test_shaped_configs_keep_the_released_widths():
    """The 3B/7B slices differ from the released Qwen2.5-VL configs in depth only (a width, the head layout, the
    tying or the M-RoPE split copied wrong would test a shape no user runs); the meta-device model has the released
    parameter count per layer, and a slice's last vision block attends fully, as blocks 7/15/23/31 do."""
    from toy.shaped_model import shape_config

    ids = {t: 1000 + i for i, t in enumerate(SPECIAL_TOKENS)}
    released = {  # config.json of Qwen/Qwen2.5-VL-3B-Instruct and -7B-Instruct
        "3b": (151936, 2048, 11008, 36, 16, 2, True, 2048),
        "7b": (152064, 3584, 18944, 28, 28, 4, False, 3584),
    }
    for base, (vocab, hidden, inter, layers, heads, kv, tied, out) in released.items():
        full, cut = shape_config(base, ids), shape_config(f"{base}-slice", ids)
        for c, depth, blocks in ((full, layers, 32), (cut, 2, 4)):
            t, v = c.text_config, c.vision_config
            assert (
                t.vocab_size,
                t.hidden_size,
                t.intermediate_size,
                t.num_hidden_layers,
                t.num_attention_heads,
                t.num_key_value_heads,
            ) == (vocab, hidden, inter, depth, heads, kv)
            assert t.hidden_size // t.num_attention_heads == 128 and bool(c.tie_word_embeddings) is tied
            assert t.rope_parameters["mrope_section"] == [16, 24, 24] and t.rope_parameters["rope_theta"] == 1e6
            assert (
                v.depth,
                v.hidden_size,
                v.intermediate_size,
                v.num_heads,
                v.out_hidden_size,
                v.patch_size,
                v.spatial_merge_size,
                v.temporal_patch_size,
                v.window_size,
            ) == (blocks, 1280, 3420, 16, out, 14, 2, 2, 112)
        assert full.vision_config.fullatt_block_indexes == [7, 15, 23, 31]
        assert cut.vision_config.fullatt_block_indexes == [3]
        from transformers import Qwen2_5_VLForConditionalGeneration

        with torch.device("meta"):
            model = Qwen2_5_VLForConditionalGeneration(cut)
        layer = sum(p.numel() for p in model.model.language_model.layers[0].parameters())
        attn = hidden * hidden * 2 + hidden * (hidden // heads) * kv * 2 + hidden + 2 * (hidden // heads) * kv
        assert layer == attn + 3 * hidden * inter + 2 * hidden
        assert (model.lm_head.weight is model.model.language_model.embed_tokens.weight) is tied
    with pytest.raises(ValueError, match="unknown model shape"):
        shape_config("72b-slice", ids)
    with pytest.raises(ValueError, match="at least 1 decoder layer"):  # not silently the default 2
        shape_config("3b-slice", ids, text_layers=0)


def test_the_qwen3_vl_8b_slice_keeps_the_released_widths():
    """Qwen3-VL-8B-Instruct's config.json in every width, cut in depth: a width, the head layout, the interleaved
    M-RoPE split or the patch copied wrong would test a shape no user runs; the slice keeps one DeepStack merger
    per decoder layer (the released 3 at blocks 8/16/24 of 27), and the meta-device model has the released
    parameter count per decoder layer (QK-norm included)."""
    from transformers import Qwen3VLForConditionalGeneration

    from toy.shaped_model import shape_config

    ids = {t: 1000 + i for i, t in enumerate(SPECIAL_TOKENS)}
    full, cut = shape_config("qwen3-vl-8b", ids), shape_config("qwen3-vl-8b-slice", ids)
    for c, depth, blocks, deepstack in ((full, 36, 27, [8, 16, 24]), (cut, 2, 4, [1, 2])):
        t, v = c.text_config, c.vision_config
        assert (
            t.vocab_size,
            t.hidden_size,
            t.intermediate_size,
            t.num_hidden_layers,
            t.num_attention_heads,
            t.num_key_value_heads,
            t.head_dim,
        ) == (151936, 4096, 12288, depth, 32, 8, 128)
        assert t.rope_parameters["mrope_section"] == [24, 20, 20] and t.rope_parameters["mrope_interleaved"]
        assert t.rope_parameters["rope_theta"] == 5e6 and not c.tie_word_embeddings
        assert (
            v.depth,
            v.hidden_size,
            v.intermediate_size,
            v.num_heads,
            v.out_hidden_size,
            v.patch_size,
            v.num_position_embeddings,
            v.deepstack_visual_indexes,
        ) == (blocks, 1152, 4304, 16, 4096, 16, 2304, deepstack)
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(cut)
    layer = sum(p.numel() for p in model.model.language_model.layers[0].parameters())
    attn = 4096 * 4096 * 2 + 4096 * 128 * 8 * 2 + 2 * 128  # q, o; k, v; q_norm, k_norm
    assert layer == attn + 3 * 4096 * 12288 + 2 * 4096
    assert len(model.model.visual.deepstack_merger_list) == 2
