"""The tiny model generates from real decoded videos (and an image) in a real vLLM engine."""

import pytest

from actors.engine import generate_groups, sampling_params
from actors.vllm_inputs import render_prompt, vllm_prompt
from videoqa.loader import MediaLoader
from videoqa.schema import load_samples

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def items(synthetic_dir, test_config):
    samples = load_samples(synthetic_dir / "train.json")
    picked = [s for s in samples if s.data_type == "video"][:3] + [s for s in samples if s.data_type == "image"][:1]
    assert len(picked) == 4, "the synthetic data should hold an image row"
    return list(MediaLoader(synthetic_dir, test_config.video.sampling())(picked))


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_grouped_sampling_from_video(vllm_engine, items, tokenizer, test_config):
    g = test_config.rollout.group_size
    prompts = [vllm_prompt(tokenizer, it) for it in items]
    completions, seconds = generate_groups(vllm_engine, prompts, sampling_params(test_config.rollout))
    assert len(completions) == len(items) * g
    assert [(c.prompt_index, c.sample_index) for c in completions] == [
        (i, j) for i in range(len(items)) for j in range(g)
    ]
    vocab = len(tokenizer)
    for c in completions:
        assert 0 < len(c.token_ids) <= test_config.rollout.max_tokens
        assert all(0 <= t < vocab for t in c.token_ids)
        assert c.finish_reason in ("length", "stop")
        full = tokenizer.decode(c.token_ids, skip_special_tokens=True)
        # vLLM holds back a trailing incomplete UTF-8 byte sequence: what full decoding adds is only the replacement
        # characters of those bytes (one per byte-token of a random model's output, so possibly several)
        assert full.startswith(c.text) and set(full[len(c.text) :]) <= {"\ufffd"}, (full, c.text)
    texts = [c.text for c in completions if c.prompt_index == 0]
    assert len(set(texts)) > 1, "temperature 1.0 should give different samples within a group"
    assert seconds > 0


def test_video_tokens_match_the_transformers_processor(vllm_engine, items, tiny_model_dir):
    """vLLM expands the video placeholder into exactly the tokens transformers' processor makes (the learner
    will score vLLM's samples with transformers, so the two must agree on the prompt)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    item = items[0]
    out = vllm_engine.generate([vllm_prompt(processor.tokenizer, item)], sampling_params_greedy(), use_tqdm=False)[0]
    hf = processor(
        text=[render_prompt(processor.tokenizer, item)],
        videos=[item.video.frames],
        video_metadata=[item.video.metadata()],
        do_sample_frames=False,
        return_tensors="pt",
    )
    assert list(out.prompt_token_ids) == hf["input_ids"][0].tolist()
    video_id = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert list(out.prompt_token_ids).count(video_id) == 16  # 8 frames of 56x56


def test_greedy_is_deterministic(vllm_engine, items, tokenizer):
    prompts = [vllm_prompt(tokenizer, items[1])]
    a = vllm_engine.generate(prompts, sampling_params_greedy(), use_tqdm=False)[0].outputs[0].token_ids
    b = vllm_engine.generate(prompts, sampling_params_greedy(), use_tqdm=False)[0].outputs[0].token_ids
    assert list(a) == list(b)


def sampling_params_greedy():
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=12)
