"""The DeepSpeed learner on the CPU: SFT, PA-GRPO/GRPO steps under ZeRO-2 and ZeRO-3, the numerical guard,
bit-exact resume, and log-probs that match vLLM's."""

import pytest
import torch

from cluster.config import Config
from cluster.config_loader import load_config
from learner.engine import Learner, Rollout
from videoqa.loader import MediaLoader
from videoqa.prompts import sft_target
from videoqa.schema import load_samples
from tests.conftest import ROOT


def learner_cfg(*overrides):
    return load_config(
        Config, ROOT / "configs" / "demo.yaml", ["learner.lr=1e-3", "learner.micro_batch_size=4", *overrides]
    )


def targets_for(learner, items):
    tok = learner.processor.tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    return [tok.encode(sft_target(it.sample), add_special_tokens=False) + [end] for it in items]


def rollouts_for(items, targets, group_size=4):
    """Two groups: the CoT target (well formed) and truncated copies (malformed), with distinct rewards."""
    out = []
    for g in range(2):
        for j in range(group_size):
            ids = targets[g] if j == 0 else targets[g][: 8 + 3 * j]
            out.append(Rollout(items[g], ids, r_perception=3.0 - j, r_reasoning=float(j % 2)))
    return out


@pytest.mark.parametrize("stage", [2, 3])
def test_sft_then_rl_steps_under_zero(stage, tiny_model_dir, cot_items):
    learner = Learner(learner_cfg(f"learner.zero_stage={stage}"), str(tiny_model_dir))
    assert learner.frozen_params > 0  # the vision tower is frozen by default
    # no JIT-compiled comm op: building it at start-up raced between ranks (a failed or killed build broke them)
    import deepspeed.comm

    assert deepspeed.comm.comm.cdb.shm_comm_op is None
    visual_before = {n: p.detach().clone() for n, p in learner.named_weights() if n.startswith("model.visual")}
    targets = targets_for(learner, cot_items)
    losses = [learner.sft_step(cot_items, targets) for _ in range(6)]
    assert losses[-1] < losses[0] - 0.5, losses  # SFT lowers the loss on the synthetic CoT
    learner.reset_reference()
    rollouts = rollouts_for(cot_items, targets)
    before = learner.logprobs([r.item for r in rollouts], [r.response_ids for r in rollouts])
    for group in learner.engine.optimizer.param_groups:  # a small step, so that its first-order effect shows
        group["lr"] = 1e-5
    stats = learner.rl_step(rollouts, group_size=4)
    after = learner.logprobs([r.item for r in rollouts], [r.response_ids for r in rollouts])
    # the update raises sum_t A_t * log p_t: the log-probs move with the advantages (the truncated rollouts share
    # their tokens' contexts, so tokens are not compared one by one). A zero loss, or a flipped sign, fails this.
    adv = _token_advantages(learner, rollouts, before.shape[1])
    gain = float(((after - before) * adv).sum())
    assert gain > 0.01 * float((after - before).abs().sum()), gain
    assert stats["unsplittable"] == 6 and stats["skipped_steps"] == 0
    assert stats["kl"] == pytest.approx(0.0, abs=1e-6)  # the reference is the policy the step started from
    assert torch.isfinite(torch.tensor(stats["loss"]))
    visual_after = dict(learner.named_weights())
    assert all(torch.equal(visual_before[n], visual_after[n]) for n in visual_before)
    # ZeRO-3 parameters are gathered a bucket at a time (one gather for many tensors), and every copy is whole
    import deepspeed

    gathers = []
    real = deepspeed.zero.GatheredParameters

    class Counting(real):
        def __init__(self, params, *args, **kwargs):
            gathers.append(len(params))
            super().__init__(params, *args, **kwargs)

    deepspeed.zero.GatheredParameters = Counting
    try:
        small = dict(learner.named_weights(bucket_mb=0.05))
        none = dict(learner.named_weights(keep=False))
    finally:
        deepspeed.zero.GatheredParameters = real
    n_params = len(list(learner.engine.module.parameters()))
    assert none == {} and set(small) == set(visual_after)
    assert all(torch.equal(small[n], visual_after[n]) for n in small)
    if stage == 3:
        assert 1 < len(gathers) < n_params and sum(gathers) == 2 * n_params, (len(gathers), n_params)
    # the rollout workers get the trainable weights only: the frozen vision tower never changes
    sent = learner.state_dict_for_rollout()
    assert set(sent) == {n for n in visual_after if not n.startswith("model.visual")}


def test_micro_batch_size_bounds_every_forward_and_the_cut_does_not_change_the_gradient(tiny_model_dir, cot_items):
    """learner.micro_batch_size bounds the batch of every forward (scoring and update); each micro-batch's loss is
    weighted by its share of the step's tokens, so the accumulated gradient is the same whether the 8 rows go
    through in one micro-batch or in four (an ignored bound, or micro-batches weighted equally, would show)."""
    grads, seen, padding = {}, {}, {}
    for mbs in (2, 8, "tokens"):
        cut = (
            ["learner.micro_batch_size=8", "learner.micro_batch_tokens=700"]
            if mbs == "tokens"
            else [f"learner.micro_batch_size={mbs}"]
        )
        learner = Learner(learner_cfg("learner.zero_stage=0", *cut), str(tiny_model_dir))
        rows = seen.setdefault(mbs, [])
        learner.engine.module.model.register_forward_pre_hook(  # the decoder: every scoring and update forward
            lambda module, args, kwargs, rows=rows: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
        )
        captured = grads.setdefault(mbs, [])
        step = learner._optimizer_step

        def capture(step=step, learner=learner, captured=captured):
            captured.append(
                {n: p.grad.clone() for n, p in learner.engine.module.named_parameters() if p.grad is not None}
            )
            return step()

        learner._optimizer_step = capture
        targets = targets_for(learner, cot_items)
        # SFT rows of different lengths, so that equal weights per micro-batch would not be the token mean
        learner.sft_step(cot_items, [t[: 20 + 9 * i] for i, t in enumerate(targets)])
        seen[mbs].clear()  # the RL step's forwards only
        padding[mbs] = learner.rl_step(rollouts_for(cot_items, targets), group_size=4)["padding_fraction"]
    assert max(seen[2]) == 2 and max(seen[8]) == 8
    # by tokens (learner.micro_batch_tokens): rows of like length together, fewer padded tokens, same gradient
    assert 1 < max(seen["tokens"]) < 8 and padding["tokens"] < padding[8]
    assert len(grads[2]) == len(grads[8]) == len(grads["tokens"]) == 2  # one optimizer step each for SFT and RL
    for other in (grads[2], grads["tokens"]):
        for small, large in zip(other, grads[8]):
            assert small.keys() == large.keys()
            for n in small:
                assert torch.allclose(small[n], large[n], rtol=1e-4, atol=1e-7), n


def _token_advantages(learner, rollouts, width):
    """PA-GRPO's per-token advantages of the rollouts, from the pure functions (tested in test_learner_math)."""
    from learner import process_advantages, token_advantages
    from learner.masks import process_masks

    a_p, a_r, _ = process_advantages(
        torch.tensor([r.r_perception for r in rollouts]), torch.tensor([r.r_reasoning for r in rollouts]), 4, "pa_grpo"
    )
    m_p, m_r = torch.zeros(len(rollouts), width), torch.zeros(len(rollouts), width)
    for i, r in enumerate(rollouts):
        p, q, _ = process_masks(learner.processor.tokenizer, r.response_ids)
        m_p[i, : len(r.response_ids)], m_r[i, : len(r.response_ids)] = p, q
    return token_advantages(a_p, a_r, m_p, m_r)


@pytest.mark.parametrize("stage", [0, 2])  # stage 0: no ZeRO optimizer to check the gradients; the learner does
def test_nonfinite_gradient_skips_the_step(stage, tiny_model_dir, cot_items):
    learner = Learner(learner_cfg(f"learner.zero_stage={stage}"), str(tiny_model_dir))
    targets = targets_for(learner, cot_items)
    before = {n: p.clone() for n, p in learner.named_weights()}
    hook = learner.engine.module.lm_head.weight.register_hook(lambda g: g * float("nan"))
    learner.sft_step(cot_items[:4], targets[:4])
    hook.remove()
    after = dict(learner.named_weights())
    assert learner.skipped_steps == 1
    assert all(torch.equal(before[n], after[n]) for n in before)  # the weights were kept
    learner.sft_step(cot_items[:4], targets[:4])
    assert learner.skipped_steps == 1 and any(not torch.equal(before[n], p) for n, p in learner.named_weights())


def test_resume_is_bit_exact(tiny_model_dir, cot_items, tmp_path):
    cfg = learner_cfg("learner.zero_stage=2", "learner.warmup_steps=3")
    a = Learner(cfg, str(tiny_model_dir))
    targets = targets_for(a, cot_items)
    for _ in range(2):
        a.sft_step(cot_items, targets)
    a.save(tmp_path / "ckpt")
    expect = [a.sft_step(cot_items, targets) for _ in range(2)]
    b = Learner(cfg, str(tiny_model_dir))
    assert b.load(tmp_path / "ckpt") == 2
    got = [b.sft_step(cot_items, targets) for _ in range(2)]
    assert got == expect  # identical floats, not just close
    # each rank restores its own RNG (beside DeepSpeed's rank-0 client state), not rank 0's
    own = tmp_path / "ckpt" / "step2" / "rng_rank0.pt"
    state = torch.load(own, weights_only=False)
    state["torch"] = torch.random.manual_seed(7).get_state()
    torch.save(state, own)
    torch.manual_seed(0)
    Learner(cfg, str(tiny_model_dir)).load(tmp_path / "ckpt")
    assert torch.equal(torch.get_rng_state(), state["torch"])
    # the Hugging Face copy loads in transformers
    from transformers import Qwen2_5_VLForConditionalGeneration

    Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "ckpt" / "hf")


@pytest.mark.vllm
def test_learner_logprobs_match_vllm(vllm_engine, tiny_model_dir, synthetic_dir, test_config):
    """Same weights, float32: the learner's log-probs of vLLM's sampled tokens equal vLLM's within 1e-3."""
    from vllm import SamplingParams

    from actors.vllm_inputs import vllm_prompt

    samples = [s for s in load_samples(synthetic_dir / "train.json")][:4]  # videos and (maybe) an image
    items = list(MediaLoader(synthetic_dir, test_config.video.sampling())(samples))
    learner = Learner(learner_cfg("learner.zero_stage=0"), str(tiny_model_dir), with_reference=False)
    prompts = [vllm_prompt(learner.processor.tokenizer, it) for it in items]
    outs = vllm_engine.generate(prompts, SamplingParams(n=2, max_tokens=16, logprobs=0, seed=3), use_tqdm=False)
    flat_items, responses, vllm_lp = [], [], []
    for it, out in zip(items, outs):
        for o in out.outputs:
            flat_items.append(it)
            responses.append(list(o.token_ids))
            vllm_lp.append([d[t].logprob for t, d in zip(o.token_ids, o.logprobs)])
    ours = learner.logprobs(flat_items, responses)
    for i, lps in enumerate(vllm_lp):
        diff = (ours[i, : len(lps)] - torch.tensor(lps)).abs().max().item()
        assert diff < 1e-3, (i, diff)


def test_gradient_accumulation_steps_once_per_call(tiny_model_dir, cot_items):
    learner = Learner(
        learner_cfg("learner.zero_stage=2", "learner.grad_accum=2", "learner.minibatches=2"), str(tiny_model_dir)
    )
    targets = targets_for(learner, cot_items)
    learner.sft_step(cot_items, targets)
    assert learner.engine.global_steps == 1  # two micro-batches, one optimizer step
    learner.reset_reference()
    learner.rl_step(rollouts_for(cot_items, targets), group_size=4)
    assert learner.engine.global_steps == 3  # two minibatches of two micro-batches each
    with pytest.raises(ValueError, match="grad_accum=2"):
        learner.sft_step(cot_items[:1], targets[:1])
    # 7 rollouts in 3 minibatches: 2 + 3 + 2, each one optimizer step (cut by ceil(7/3) = 3 it was 3 + 3 + 1, and
    # the last could not fill 2 micro-batches after two optimizer steps had been taken)
    seven = rollouts_for(cot_items, targets)[:7]
    learner.cfg.minibatches = 3
    learner.rl_step(seven, group_size=7)
    assert learner.engine.global_steps == 6
    # 5 in 3 minibatches gives one of 1 < grad_accum: refused before any step, the weights untouched
    before = {k: v.clone() for k, v in learner.state_dict_for_rollout().items() if "visual" not in k}
    with pytest.raises(ValueError, match="minibatch of 1, too few for learner.grad_accum=2"):
        learner.rl_step(seven[:5], group_size=5)
    assert learner.engine.global_steps == 6
    after = learner.state_dict_for_rollout()
    assert all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize("stage", [0, 3])
def test_vision_features_once_per_prompt_per_update(stage, tiny_model_dir, cot_items):
    """learner.share_vision_features: with the tower frozen, one RL update runs it once per prompt (2 prompts x
    G=4, scored by the old policy and the reference in micro-batches of 3, one of them across both prompts, then 2
    minibatches x 2 epochs in micro-batches of 2: 14 tower runs without it), and the update is the same: old and reference log-probs, each optimizer step's gradient (ZeRO-0)
    and the updated weights' log-probs to float32 precision. Catches features reused across prompts or rows in the
    wrong order (different log-probs), a store that misses (more calls), features computed lazily when a
    micro-batch first meets a prompt (a hang across ZeRO-3 ranks) or gradients leaking into the frozen tower
    (different gradients); ZeRO-3 checks that the tower, called outside the model's forward, gathers
    its partitioned weights."""
    out = {}
    for share in (False, True):
        learner = Learner(
            learner_cfg(
                f"learner.zero_stage={stage}",
                "learner.minibatches=2",
                "learner.update_epochs=2",
                "learner.micro_batch_size=3",
                f"learner.share_vision_features={str(share).lower()}",
            ),
            str(tiny_model_dir),
        )
        assert learner.reference is not None
        calls, grads, order = [], [], []
        for model in (learner.engine.module, learner.reference):
            model.model.visual.register_forward_pre_hook(
                lambda *a, calls=calls, order=order: calls.append(1) or order.append("tower")
            )
        learner.engine.module.model.language_model.register_forward_pre_hook(
            lambda *a, order=order: order.append("decoder")
        )
        step = learner._optimizer_step

        def capture(step=step, learner=learner, grads=grads):
            grads.append({n: p.grad.clone() for n, p in learner.engine.module.named_parameters() if p.grad is not None})
            return step()

        learner._optimizer_step = capture
        rollouts = rollouts_for(cot_items, targets_for(learner, cot_items))
        items, responses = [r.item for r in rollouts], [r.response_ids for r in rollouts]
        before = learner.logprobs(items, responses)
        ref = learner.logprobs(items, responses, model=learner.reference)
        calls.clear()
        order.clear()
        stats = learner.rl_step(rollouts, group_size=4)
        out[share] = dict(
            calls=len(calls),
            grads=grads,
            stats=stats,
            before=before,
            ref=ref,
            order=list(order),
            after=learner.logprobs(items, responses),
        )
    assert out[False]["calls"] == 14 and out[True]["calls"] == 2 == out[True]["stats"]["vision_tower_calls"]
    assert "vision_tower_calls" not in out[False]["stats"]
    # both towers' runs before the first decoder forward: under ZeRO-3 each run gathers the partitioned tower with
    # every rank, so they must not depend on which micro-batch first meets a prompt (which differs between ranks)
    assert out[True]["order"][:2] == ["tower", "tower"] and "tower" not in out[True]["order"][2:]
    for k in ("before", "ref", "after"):
        assert torch.allclose(out[False][k], out[True][k], rtol=1e-5, atol=1e-6), k
    for k in ("loss", "kl", "entropy", "ratio_mean"):
        assert out[False]["stats"][k] == pytest.approx(out[True]["stats"][k], rel=1e-4, abs=1e-7), k
    if stage == 0:
        assert len(out[False]["grads"]) == len(out[True]["grads"]) == 4
        for a, b in zip(out[False]["grads"], out[True]["grads"]):
            assert a.keys() == b.keys() and not any(n.startswith("model.visual") for n in a)
            for n in a:
                assert torch.allclose(a[n], b[n], rtol=1e-4, atol=1e-7), n


def test_gradient_checkpointing_gives_the_same_gradient(tiny_model_dir, cot_items):
    """learner.gradient_checkpointing: the decoder's activations are recomputed in the backward (its layers run
    twice), and the gradient is the one without it. The frozen vision tower stays out of the autograd graph: it runs
    once per forward and its output needs no grad (transformers' input-grad hook on its patch embedding made it run
    backward and recompute, 2.6x the step time on an H200)."""
    grads, calls, vision_calls, vision_grad = {}, {}, {}, {}
    for on in (False, True):
        learner = Learner(
            learner_cfg("learner.zero_stage=0", f"learner.gradient_checkpointing={str(on).lower()}"),
            str(tiny_model_dir),
        )
        layer = learner.engine.module.model.language_model.layers[0]
        calls[on], vision_calls[on], vision_grad[on] = [], [], []
        # a pre-hook: the recompute stops early once it has what the backward needs, before forward hooks would run
        layer.register_forward_pre_hook(lambda *a, seen=calls[on]: seen.append(1))
        visual = learner.engine.module.model.visual
        visual.blocks[0].register_forward_pre_hook(lambda *a, seen=vision_calls[on]: seen.append(1))
        visual.blocks[-1].register_forward_hook(lambda m, a, out, seen=vision_grad[on]: seen.append(out.requires_grad))
        step = learner._optimizer_step

        def capture(step=step, learner=learner, on=on):
            grads[on] = {n: p.grad.clone() for n, p in learner.engine.module.named_parameters() if p.grad is not None}
            step()

        learner._optimizer_step = capture
        learner.sft_step(cot_items[:4], targets_for(learner, cot_items[:4]))
    assert len(calls[True]) == 2 * len(calls[False])  # recomputed in the backward
    assert vision_calls[False] and len(vision_calls[True]) == len(vision_calls[False])  # the frozen tower: not
    assert vision_grad[True] == vision_grad[False] == [False] * len(vision_calls[False])
    for n in grads[False]:
        assert torch.allclose(grads[False][n], grads[True][n], rtol=1e-4, atol=1e-7), n
