"""The learner's memory savers: log-probs through the LM head in chunks of response positions (never the full
logits), and a frozen LM head under ZeRO-3 (the helpers are test_learner.py's)."""

from types import SimpleNamespace

import pytest
import torch

from learner.engine import Learner
from tests.test_learner import learner_cfg, rollouts_for, targets_for


def test_response_logprobs_in_chunks_never_build_the_full_logits(tiny_model_dir, cot_items):
    """The LM head sees only response positions, at most `chunk` at a time; the result and its gradient equal the
    full-logits computation (a shifted position or a wrong gather would show)."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from learner.batch import build_inputs, response_logprobs

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    targets = [t[:n] for t, n in zip(targets_for(SimpleNamespace(processor=processor), cot_items[:3]), (40, 7, 23))]
    batch = build_inputs(processor, model.config, cot_items[:3], targets)
    seen = []
    model.lm_head.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    ours = response_logprobs(model, batch, chunk=16)
    ours.sum().backward()
    grad_ours = model.lm_head.weight.grad.clone()
    assert seen and max(seen) <= 16 and sum(seen) == 2 * 40  # 40 positions in chunks of 16, and again in backward
    model.zero_grad()
    logits = model(**batch.model_kwargs).logits  # the reference: all (B, L, V) logits
    rows = []
    for i, P in enumerate(batch.prompt_lengths):
        lp = torch.log_softmax(logits[i, P - 1 : P - 1 + 40].float(), -1)
        ids = batch.response_ids[i]
        rows.append(lp[torch.arange(len(ids)).clamp(max=lp.shape[0] - 1), ids] * batch.response_mask[i])
    full = torch.stack(rows)
    full.sum().backward()
    assert torch.allclose(ours.detach(), full.detach(), atol=1e-5)
    assert torch.allclose(grad_ours, model.lm_head.weight.grad, atol=1e-5)


def test_frozen_lm_head_under_zero3(tiny_model_dir, cot_items):
    """learner.freeze naming the LM head (as the shapes benchmark and a user fitting a 7B do; tied embeddings frozen
    are the same case) under ZeRO-3: the checkpointed LM-head chunks were recomputed in the backward against the
    head's empty partition (ZeRO-3 fetches only trainable modules for the backward) and the step raised. Now it
    steps, the head stays as it was, and the loss is the one with a trainable head (the first step's loss does not
    depend on what is frozen)."""
    targets = targets_for(SimpleNamespace(processor=_processor(tiny_model_dir)), cot_items)
    rollouts = rollouts_for(cot_items, targets)
    losses = {}
    for freeze in ("[model.visual]", "[model.visual,lm_head]"):
        learner = Learner(learner_cfg("learner.zero_stage=3", f"learner.freeze={freeze}"), str(tiny_model_dir))
        head_before = dict(learner.named_weights())["lm_head.weight"]
        losses[freeze] = learner.rl_step(rollouts, group_size=4)["loss"]
        head_after = dict(learner.named_weights())["lm_head.weight"]
        assert torch.equal(head_before, head_after) is (freeze != "[model.visual]")
    assert losses["[model.visual]"] == pytest.approx(losses["[model.visual,lm_head]"], rel=1e-5)


def _processor(model_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(model_dir)
