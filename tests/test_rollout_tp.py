"""A tensor-parallel rollout worker (vLLM's CPU backend, TP=2) fed through the weight group."""

import pytest
import torch

from actors.rollout_group import LocalWeightSource, RolloutGroup
from actors.rollout_worker import RolloutRequest
from actors.weight_transport import WeightSender
from tests.test_rollout_group import _perturbed, processor  # noqa: F401 - processor is a fixture

pytestmark = pytest.mark.vllm


def test_tensor_parallel_worker_receives_through_the_group(ray_cluster, processor, tmp_path, test_config):  # noqa: F811
    """A rollout worker with tensor_parallel_size=2 on vLLM's CPU backend: both TP ranks join the weight group as
    members of their own and load their shards of the full tensors; greedy generation then equals the perturbed
    model's in transformers. Its channel refuses it (one receiver per channel) with an error saying so."""
    from cluster.config import TinyModelSection
    from toy.tiny_model import build_tiny_model

    model_dir = build_tiny_model(
        tmp_path / "tp-model", TinyModelSection(num_kv_heads=2, vision_heads=2)
    )  # TP=2 divides
    rollout = test_config.rollout.model_copy(update={"tensor_parallel_size": 2, "num_cpus": 2})
    transport = test_config.transport.model_copy(update={"scheme": "group", "timeout_s": 20})
    source = LocalWeightSource(WeightSender("127.0.0.1", timeout_s=20), bucket_mb=1)
    tp = RolloutGroup(rollout, transport, str(model_dir), source=source, num_workers=1)
    try:
        model = _perturbed(model_dir)
        source.update(model.state_dict(), version=1)
        assert tp.sync_weights().outcomes == {"rollout-0": "ok"}
        text = processor.tokenizer.apply_chat_template(
            [{"role": "user", "content": "Which direction does the red square move?"}],
            tokenize=False,
            add_generation_prompt=True,
        )
        out = tp.generate(
            [RolloutRequest("t", {"prompt": text})], overrides={"temperature": 0.0, "n": 1, "max_tokens": 12}
        )[0]
        ids = processor.tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            ref = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
        assert out.weight_version == 1 and out.responses[0].token_ids == ref[0, ids.shape[1] :].tolist()
        tp.transport = transport.model_copy(update={"scheme": "channels"})
        source.update(model.state_dict(), version=2)
        report = tp.sync_weights()
        assert "only through the group" in report.outcomes["rollout-0"]
    finally:
        tp.shutdown()
