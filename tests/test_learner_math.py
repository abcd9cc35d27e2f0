"""Advantages, token masks and the loss, against hand-computed values."""

import math

import pytest
import torch

from learner import group_advantages, policy_loss, process_advantages, token_advantages
from learner.masks import process_masks, token_bytes


def test_group_advantages_by_hand():
    adv, flat = group_advantages(torch.tensor([1.0, 3.0, 2.0, 2.0, 5.0, 5.0]), group_size=2)
    assert torch.allclose(adv, torch.tensor([-1.0, 1.0, 0.0, 0.0, 0.0, 0.0]), atol=1e-5)
    assert flat == 2  # the two groups with equal rewards carry no signal
    adv, _ = group_advantages(torch.tensor([0.0, 1.0, 2.0, 3.0]), 4)
    std = math.sqrt(1.25)  # population std of 0..3
    assert torch.allclose(adv, torch.tensor([-1.5, -0.5, 0.5, 1.5]) / std, atol=1e-5)
    with pytest.raises(ValueError, match="divisible by group_size=3"):
        group_advantages(torch.zeros(4), 3)


def test_excluded_samples_leave_the_normalisation():
    r = torch.tensor([0.0, 2.0, 100.0, 1.0])
    adv, _ = group_advantages(r, 4, valid=torch.tensor([True, True, False, True]))
    # over {0, 2, 1}: mean 1, population std sqrt(2/3)
    s = math.sqrt(2 / 3)
    assert torch.allclose(adv, torch.tensor([-1 / s, 1 / s, 0.0, 0.0]), atol=1e-5)


def test_pa_grpo_equals_grpo_when_processes_agree():
    r = torch.tensor([0.0, 1.0, 3.0, 1.0, 2.0, 2.0, 2.0, 0.5])
    a_p, a_r, _ = process_advantages(r, r, 4, "pa_grpo")
    g_p, g_r, _ = process_advantages(r, r, 4, "grpo")
    single, _ = group_advantages(r, 4)
    m_p = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0]] * 8)
    m_r = 1 - m_p
    m_p[3], m_r[3] = 0.5, 0.5  # an unsplittable response
    pa = token_advantages(a_p, a_r, m_p, m_r)
    gr = token_advantages(g_p, g_r, m_p, m_r)
    assert torch.allclose(pa, gr, atol=1e-5)
    assert torch.allclose(pa, single[:, None].expand(8, 5), atol=1e-5)
    with pytest.raises(ValueError, match="unknown advantage mode"):
        process_advantages(r, r, 4, "ppo")


def test_pa_grpo_normalises_each_process_in_its_own_group():
    """Processes that disagree: A_P comes from R_P alone and lands on perception tokens, A_R from R_R on reasoning
    tokens (swapping either would show)."""
    r_p = torch.tensor([3.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    r_r = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0])
    a_p, a_r, st = process_advantages(r_p, r_r, 4, "pa_grpo")
    std = math.sqrt((2.25**2 + 3 * 0.75**2) / 4)  # group 1 of R_P: mean 0.75, population std
    assert a_p[:4].tolist() == pytest.approx([2.25 / std, -0.75 / std, -0.75 / std, -0.75 / std], abs=1e-4)
    assert a_p[4:].tolist() == [0.0] * 4 and st == {"flat_groups_perception": 1, "flat_groups_reasoning": 0}
    assert a_r[:4].tolist() == pytest.approx([-0.75 / std, 2.25 / std, -0.75 / std, -0.75 / std], abs=1e-4)
    m_p = torch.tensor([[1.0, 1.0, 0.0]] * 8)
    tok = token_advantages(a_p, a_r, m_p, 1 - m_p)
    assert torch.equal(tok[:, 0], a_p) and torch.equal(tok[:, 2], a_r)
    g, _, _ = process_advantages(r_p, r_r, 4, "grpo")
    assert torch.allclose(g, group_advantages(r_p + r_r, 4)[0])  # one advantage of the sum, on every token


def test_grpo_leaves_out_rollouts_whose_perception_reward_is_unknown():
    r_p = torch.tensor([1.0, 0.0, 9.0, 1.0])  # rollout 2's verdict is missing: its R_P (9) means nothing
    r_r = torch.tensor([1.0, 1.0, 0.0, 0.0])
    valid = torch.tensor([True, True, False, True])
    a, _, _ = process_advantages(r_p, r_r, 4, "grpo", perception_valid=valid)
    expected, _ = group_advantages(torch.tensor([2.0, 1.0, 0.0, 1.0]), 4, valid)
    assert a[2] == 0 and torch.allclose(a, expected)
    assert torch.allclose(a[[0, 1, 3]], group_advantages(torch.tensor([2.0, 1.0, 1.0]), 3)[0])  # as if it were absent


def test_policy_loss_by_hand():
    logp = torch.tensor([[math.log(0.5), math.log(0.2)]])
    old = torch.tensor([[math.log(0.25), math.log(0.2)]])  # ratios 2.0 and 1.0
    adv = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2)
    loss, st = policy_loss(logp, old, None, adv, mask, clip_eps=0.2, beta=0.0)
    # token 1: min(2*1, 1.2*1) = 1.2; token 2: min(-1, -1) = -1 -> loss = -(1.2 - 1) / 2
    assert loss.item() == pytest.approx(-0.1, abs=1e-6) and st["clip_fraction"] == 0.5
    # all four sides of the clip: r = 2 and r = 0.5, each with A = +1 and A = -1
    lp = torch.tensor([[math.log(0.5), math.log(0.5), math.log(0.1), math.log(0.1)]])
    op = torch.tensor([[math.log(0.25), math.log(0.25), math.log(0.2), math.log(0.2)]])
    a = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss4, st4 = policy_loss(lp, op, None, a, torch.ones(1, 4), clip_eps=0.2, beta=0.0)
    # r=2,A=+1: min(2, 1.2) = 1.2 (clipped); r=2,A=-1: min(-2, -1.2) = -2 (not clipped: the pessimistic side)
    # r=0.5,A=+1: min(0.5, 0.8) = 0.5 (not clipped); r=0.5,A=-1: min(-0.5, -0.8) = -0.8 (clipped)
    assert loss4.item() == pytest.approx(-(1.2 - 2 + 0.5 - 0.8) / 4, abs=1e-6)
    assert st4["clip_fraction"] == 0.5  # only the two tokens whose clipped branch was taken
    ref = old.clone()
    loss_kl, st = policy_loss(logp, old, ref, adv, mask, clip_eps=0.2, beta=0.04)
    d = ref - logp
    k3 = (torch.exp(d) - d - 1).mean().item()
    assert loss_kl.item() == pytest.approx(-0.1 + 0.04 * k3, abs=1e-6) and st["kl"] == pytest.approx(k3, abs=1e-6)


def test_aggregations_differ_on_uneven_lengths():
    logp = torch.zeros(2, 3)
    adv = torch.tensor([[1.0, 1.0, 1.0], [-2.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    tok, _ = policy_loss(logp, logp, None, adv, mask, beta=0)
    seq, _ = policy_loss(logp, logp, None, adv, mask, beta=0, aggregation="seq_mean_token_mean")
    assert tok.item() == pytest.approx(-(3 - 2) / 4) and seq.item() == pytest.approx(-(1 - 2) / 2)
    with pytest.raises(ValueError, match="aggregation"):
        policy_loss(logp, logp, None, adv, mask, aggregation="sum")


def test_gradient_routing():
    """d loss / d logp_t = -A_t * r_t / T on unclipped tokens and 0 on tokens where min() takes the clipped
    branch, with A_t = A_P on perception tokens and A_R on reasoning ones: checked against that formula by hand
    (ratios away from 1, so a dropped ratio, swapped masks or a flipped sign all show)."""
    torch.manual_seed(0)
    logp = (torch.randn(2, 6) - 2).requires_grad_(True)
    old = logp.detach() + torch.tensor(
        [[0.05, -0.08, 0.1, -0.05, 0.02, 0.5], [-0.1, 0.07, 0.03, -0.02, 0.09, -0.04]]
    )  # ratios 0.90-1.11, one of 0.61
    m_p = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.float32)
    m_r = 1 - m_p
    a_p, a_r = torch.tensor([1.5, -0.5]), torch.tensor([-1.0, 2.0])
    adv = token_advantages(a_p, a_r, m_p, m_r)
    loss, _ = policy_loss(logp, old, None, adv, torch.ones(2, 6), clip_eps=0.2, beta=0)
    loss.backward()
    ratio = torch.exp(logp.detach() - old)
    expected = -adv * ratio / 12
    expected[0, 5] = 0.0  # r = 0.61 < 1 - eps with A_R = -1 < 0: the clipped branch, no gradient
    assert torch.allclose(logp.grad, expected, atol=1e-6)
    assert torch.allclose(adv[0, :3], torch.full((3,), 1.5)) and torch.allclose(adv[1, 2:], torch.full((4,), 2.0))


def test_process_masks_from_generated_ids(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "<observation>I see a red square.</observation><think>It moves left.</think><answer>A</answer>"
    ids = tok.encode(text, add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")]
    assert b"".join(token_bytes(tok, ids)) == (text + "<|im_end|>").encode()
    m_p, m_r, ok = process_masks(tok, ids)
    assert ok and torch.all(m_p + m_r == 1)
    perception_text = tok.decode([t for t, m in zip(ids, m_p) if m == 1])
    # the observation span, plus at most the one token that straddles the boundary (BPE may merge "><")
    assert perception_text.startswith("<observation>I see a red square.</observation>")
    assert len(perception_text) - len("<observation>I see a red square.</observation>") < 3
    assert "think" not in perception_text and m_r[-1] == 1  # the end-of-turn token is reasoning's
    assert m_p.nonzero().flatten().tolist() == list(range(int(m_p.sum())))  # one contiguous span from the start
    m_p, m_r, ok = process_masks(tok, tok.encode("no tags here", add_special_tokens=False))
    assert not ok and torch.all(m_p == 0.5) and torch.all(m_r == 0.5)
    # a response whose observation is never closed cannot be split either
    assert not process_masks(tok, tok.encode("<observation>I see", add_special_tokens=False))[2]


def test_micro_batch_cuts_and_weights():
    from learner.micro_batches import split, token_share

    assert split(list(range(7)), 3) == [[0, 1], [2, 3, 4], [5, 6]]  # near-equal, contiguous, none empty
    with pytest.raises(ValueError, match="2 samples cannot fill learner.minibatches=3 pieces"):
        split([0, 1], 3, "learner.minibatches")
    tokens = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.float32)
    pieces = [[0, 1], [2, 3]]
    shares = [token_share(tokens, p, [0, 1, 2, 3], "token_mean") for p in pieces]
    assert shares == [0.5, 0.5] and sum(shares) == 1.0  # 4 of 8 tokens each
    assert token_share(tokens, [0], [0, 1, 2, 3], "token_mean") == 3 / 8
    assert token_share(tokens, [0], [0, 1, 2, 3], "seq_mean_token_mean") == 1 / 4


def test_token_budget_micro_batches():
    """learner.micro_batch_tokens: rows sorted longest first, packed while rows x the longest row fits the budget;
    `parts` forces more micro-batches (every learner rank runs as many as the one that needs the most). Catches an
    unsorted cut (padding as high as the contiguous one), a batch over the budget, a row lost or repeated, and
    extra parts that leave a batch empty."""
    from learner.micro_batches import padding_fraction, token_budget

    lengths = [100, 800, 120, 790, 400, 410, 105, 95]  # responses varying 1-8x
    rows = list(range(8))
    cut = token_budget(rows, lengths, budget=1700)
    assert cut == [[1, 3], [5, 4, 2, 6], [0, 7]]
    assert all(len(b) * max(lengths[i] for i in b) <= 1700 for b in cut)
    assert padding_fraction(cut, lengths) < 0.5 * padding_fraction([[0, 1, 2, 3], [4, 5, 6, 7]], lengths)
    more = token_budget(rows, lengths, budget=1700, parts=6)
    assert len(more) == 6 and all(more) and sorted(i for b in more for i in b) == rows
    assert padding_fraction([[0], [1]], lengths) == 0.0


def test_logprobs_and_loss_stay_on_the_model_device(monkeypatch):
    """The learner's own tensors follow the model to its device. No GPU is needed: under FakeTensorMode tensors
    carry a device (here cuda) and no data, and an op mixing devices raises. The stand-in model's decoder checks
    that every input reached its device; the positions, ids and mask built after the forward must be there too
    (an `arange` without `device=`, or ids left on the CPU, fails), and the loss of device tensors stays there."""
    from types import SimpleNamespace

    from torch._subclasses.fake_tensor import FakeTensorMode

    from learner.batch import ScoredInputs, response_logprobs

    B, L, R, H, V = 2, 9, 4, 8, 16
    batch = ScoredInputs(  # built on the CPU, as build_inputs does
        model_kwargs={"input_ids": torch.randint(0, V, (B, L)), "attention_mask": torch.ones(B, L, dtype=torch.long)},
        response_ids=torch.randint(0, V, (B, R)),
        response_mask=torch.ones(B, R),
        prompt_lengths=[5, 4],
    )
    from torch._subclasses import fake_impls

    # the loss's float() statistics are device-to-host reads on a GPU; a fake tensor has no value to read: 0.0
    monkeypatch.setitem(
        fake_impls.op_implementations_dict, torch.ops.aten._local_scalar_dense.default, lambda fake_mode, func, arg: 0.0
    )
    with FakeTensorMode(allow_non_fake_inputs=True):
        cuda = torch.device("cuda", 0)
        seen = []

        def decoder(use_cache=False, **kwargs):
            seen.extend(v.device for v in kwargs.values())
            return SimpleNamespace(last_hidden_state=torch.randn(B, L, H, device=cuda, requires_grad=True))

        model = SimpleNamespace(device=cuda, model=decoder, lm_head=torch.nn.Linear(H, V, device=cuda))
        lp = response_logprobs(model, batch, chunk=3)
        assert seen and all(d == cuda for d in seen) and lp.device == cuda and lp.shape == (B, R)

        def here(t):  # as rl_step moves each batch tensor it built on the CPU
            return t.to(lp.device)

        adv = token_advantages(torch.randn(B), torch.randn(B), torch.ones(B, R), torch.zeros(B, R))
        loss, _ = policy_loss(
            lp,
            here(lp.detach().cpu()),
            here(lp.detach().cpu()),
            here(adv),
            here(torch.ones(B, R)),
            is_weight=here(torch.ones(B, R)),
        )
        assert loss.device == cuda
