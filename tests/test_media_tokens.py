"""A sampled <|video_pad|> / <|image_pad|> token in a response must not crash the learner (M-RoPE positions come
from the prompt and extend over the response), and it is scored as the sampled id."""

import torch

from cluster.config import Config
from cluster.config_loader import load_config
from learner.batch import build_inputs, prompt_inputs
from learner.engine import Learner
from videoqa.loader import MediaLoader
from videoqa.schema import load_samples


def test_response_with_media_tokens_is_scored(tiny_model_dir, synthetic_dir, test_config):
    cfg = load_config(Config, None, ["learner.zero_stage=0", "learner.beta=0"])
    learner = Learner(cfg, str(tiny_model_dir), with_reference=False)
    item = next(
        iter(MediaLoader(synthetic_dir, test_config.video.sampling())(load_samples(synthetic_dir / "train.json")[:1]))
    )
    tok = learner.processor.tokenizer
    video, image = tok.convert_tokens_to_ids("<|video_pad|>"), tok.convert_tokens_to_ids("<|image_pad|>")
    plain = tok.encode("<observation>a</observation><think>b</think>", add_special_tokens=False)
    response = plain[:3] + [video, image] + plain[3:]
    lp = learner.logprobs([item], [response])
    assert lp.shape == (1, len(response)) and torch.isfinite(lp).all() and (lp[0] < 0).all()
    batch = build_inputs(learner.processor, learner.model_config, [item], [response])
    P = len(prompt_inputs(learner.processor, item)["input_ids"][0])
    pos = batch.model_kwargs["position_ids"][:, 0]
    tail = pos[:, P:]
    assert torch.equal(tail[0], tail[1]) and torch.equal(tail[0], tail[2])  # text positions on every axis
    assert torch.equal(tail[0], torch.arange(int(pos[:, :P].max()) + 1, int(pos[:, :P].max()) + 1 + len(response)))
    assert batch.response_ids[0].tolist() == response  # the sampled ids are what gets scored
