"""More edge cases found by mutation testing (`make mutate`): the accuracy rules, the policy loss, group
advantages at their limits. Each test names the single-point bug it catches."""

import pytest
import torch

from learner.advantages import group_advantages
from rewards import think_answer_mismatch


# -- accuracy rules, the policy loss, advantages at their edges -------------------------------------------------------
@pytest.mark.parametrize(
    "answer, truth, ptype, expect",
    [
        ("3.14", "3.14", "numerical", 1.0),
        ("3.141", "3.14", "numerical", 1.0),
        ("3.2", "3.14", "numerical", 0.0),
        ("3.0", "3", "numerical", 0.0),  # only one side has a decimal point
        ("0", "0", "regression", 1.0),
        ("1", "0", "regression", 0.0),  # relative error undefined at 0: only 0 is right
        ("x", "5", "regression", 0.0),
        ("5", "x", "regression", 0.0),
        ("7.5", "5", "regression", 0.5),
        ("", "", "OCR", 1.0),
        ("a", " ", "OCR", 0.0),
        (" ", "a b", "OCR", 0.0),
        ("a c", "a b", "OCR", 0.5),
        ("", "a cat", "free-form", 0.0),
        ("a cat", "", "free-form", 0.0),
    ],
)
def test_accuracy_rules_at_their_edges(answer, truth, ptype, expect):
    """Catches rounding to the wrong precision, the zero-truth rule dropped or inverted, a non-number not scored
    0, and the empty-text rules of OCR and free-form inverted."""
    from rewards import accuracy_reward

    assert accuracy_reward(answer, truth, ptype) == pytest.approx(expect)


def test_mismatch_rounds_both_sides_to_two_decimals():
    assert think_answer_mismatch("<think>so 2.0</think><answer>2.004</answer>", "numerical") is False


def test_group_advantages_with_groups_of_one_and_one_valid_member():
    """A group of one, or one valid member, has no spread: zeros and counted flat. Catches the count of valid
    members clamped to 2 (a lone reward would get a spread of its own) and group_size 1 refused."""
    adv, flat = group_advantages(torch.tensor([3.0, 1.0]), 1)
    assert adv.tolist() == [0.0, 0.0] and flat == 2
    adv, flat = group_advantages(torch.tensor([3.0, 1.0, 2.0]), 3, torch.tensor([True, False, False]))
    assert adv.tolist() == [0.0, 0.0, 0.0] and flat == 1
    adv, _ = group_advantages([1, 0], 2)  # integer rewards are made float
    assert adv.dtype == torch.float32 and adv.tolist() == pytest.approx([1, -1], abs=1e-4)
    with pytest.raises(ValueError, match="divisible by group_size=3"):
        group_advantages(torch.zeros(4), 3)
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(4), 0)


def test_policy_loss_defaults_one_token_and_masked_stats():
    """Catches the defaults changed (clip 0.2, beta 0.04), the token count clamped to 2 (one token's loss halved),
    and stats that divide by the mask or read masked tokens (a masked token with a huge ratio)."""
    from learner.loss import policy_loss

    logp = torch.tensor([[-1.0, -1.0]])
    old = torch.tensor([[-1.5, -30.0]])  # ratio e^0.5 on the real token, e^29 on the padding
    ref = torch.tensor([[-0.5, -1.0]])
    adv, mask = torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    loss, stats = policy_loss(logp, old, ref, adv, mask)
    explicit, _ = policy_loss(logp, old, ref, adv, mask, clip_eps=0.2, beta=0.04)
    kl = float(torch.exp(torch.tensor(0.5)) - 0.5 - 1)
    assert float(loss) == pytest.approx(-1.2 + 0.04 * kl, rel=1e-5) and float(explicit) == float(loss)
    assert stats["kl"] == pytest.approx(kl, rel=1e-5) and stats["clip_fraction"] == 1.0
    assert stats["ratio_mean"] == pytest.approx(float(torch.exp(torch.tensor(0.5))), rel=1e-5)
    # at the clip boundary the ratio is not counted as clipped; below 1 - eps with A < 0 it is
    at_edge = torch.log(torch.tensor([[1.25, 0.5]]))
    _, s = policy_loss(at_edge, torch.zeros(1, 2), None, torch.tensor([[1.0, -1.0]]), torch.ones(1, 2), clip_eps=0.25)
    assert s["clip_fraction"] == 0.5
    _, s = policy_loss(
        torch.log(torch.tensor([[0.5, 1.5]])), torch.zeros(1, 2), None, torch.tensor([[0.0, 0.0]]), torch.ones(1, 2)
    )
    assert s["clip_fraction"] == 0.0  # a zero advantage is never clipped
