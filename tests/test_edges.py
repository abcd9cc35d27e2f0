"""Edge cases of the pure modules that mutation testing (`make mutate`) showed the other fast tests let through:
each test names the single-point bug (a flipped comparison, a dropped clamp, swapped arguments, an off-by-one) it
catches."""

from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from actors.rollout_worker import Response, RolloutResult
from cluster.step_batch import StepBatch
from learner.advantages import group_advantages, process_advantages
from learner.micro_batches import pad_to, split, token_budget, token_share
from learner.mrope import mrope_positions
from rewards import LengthRule, ProcessRewards, parse_response, process_rewards, think_answer_mismatch
from videoqa.sampler import IndexOrder


def _rewards(**kw):
    base = dict(acc_p=0.0, form_p=0.0, len_p=0.0, acc_r=0.0, form_r=0.0, len_r=0.0, verdict=None, perception_valid=True)
    return ProcessRewards(**{**base, **kw})


def _batch(versions, G=2, types=None):
    items = [
        SimpleNamespace(sample=SimpleNamespace(problem_id=f"p{i}", problem_type=(types or ["OCR"] * 9)[i]))
        for i in range(len(versions))
    ]
    results = [
        RolloutResult(
            f"p{i}", [1], [Response([5] * (i + k + 1), "x", "stop", [-0.1] * (i + k + 1)) for k in range(G)], v, "w0"
        )
        for i, v in enumerate(versions)
    ]
    return StepBatch(3, list(range(len(versions))), items, results)


# -- the step batch's hand-off to the learner and its reward summary --------------------------------------------------
def test_learner_rollouts_carry_each_rollouts_own_rewards_and_flags():
    """Catches R_P and R_R swapped, the validity flag dropped or inverted, the behaviour log-probs or the response
    ids of another rollout, and `stale` with <= for < (a rollout of the learner's own version is not stale)."""
    b = _batch([2, 1])
    b.rewards = [
        _rewards(acc_p=1, form_p=1, acc_r=0.25),
        _rewards(form_r=1, perception_valid=False),
        _rewards(acc_p=1),
        _rewards(acc_r=1, len_r=0.2),
    ]
    rows = b.learner_rollouts(learner_version=2)
    assert [r["r_perception"] for r in rows] == [2, 0, 1, 0]
    assert [r["r_reasoning"] for r in rows] == [0.25, 1, 0, 1.2]
    assert [r["perception_valid"] for r in rows] == [True, False, True, True]
    assert [len(r["response_ids"]) for r in rows] == [1, 2, 2, 3]
    assert [len(r["behaviour_logprobs"]) for r in rows] == [1, 2, 2, 3]
    assert [r["stale"] for r in rows] == [False, False, True, True]
    assert [r["stale"] for r in b.learner_rollouts(learner_version=1)] == [False] * 4


def test_missing_fraction_counts_cached_verdicts_as_judged():
    """A cached verdict is a verdict: catches CACHED left out of the judged count (or counted as missing), and
    every no-verdict status (deadline and unparseable too) counted as missing."""
    b = _batch([1])
    b.score_stats = Counter(judge_cached=6, judge_deadline=1, judge_unparseable=1, judge_ok=2, judge_not_needed=9)
    assert b.missing_verdict_fraction() == pytest.approx(2 / 10)
    b.score_stats = Counter(judge_not_needed=4)
    assert b.missing_verdict_fraction() == 0.0  # nothing needed a verdict: nothing is missing


def test_replaced_groups_bring_their_judge_counters_and_times():
    """Catches a resampled group's judge counters or call times dropped (the step's missing fraction and judge
    latency would ignore them) and a group put at the wrong position."""
    b = _batch([1, 1, 1])
    b.rewards = [_rewards(acc_r=i) for i in range(6)]
    b.score_stats, b.judge_seconds = Counter(judge_ok=4), [0.1]
    other = _batch([5, 6])
    other.rewards = [_rewards(acc_r=10 + i) for i in range(4)]
    other.score_stats, other.judge_seconds = Counter(judge_ok=1, judge_failed=3), [0.2, 0.3]
    b.replace_groups([2, 0], other)
    assert [r.acc_r for r in b.rewards] == [12, 13, 2, 3, 10, 11]
    assert b.versions() == [6, 1, 5]
    assert b.score_stats == Counter(judge_ok=5, judge_failed=3) and b.judge_seconds == [0.1, 0.2, 0.3]


def test_reward_summary_keys_each_read_their_own_part():
    """Every part given a distinct value: catches one key reading another part (acc_p for acc_r, len_r for len_p),
    a mean over the wrong count, the yes-rate counting unjudged rollouts, and per-type accuracy mixing types."""
    b = _batch([1, 1], types=["OCR", "numerical"])
    b.rewards = [
        _rewards(acc_p=1, form_p=1, len_p=0.2, acc_r=1, form_r=1, len_r=0.2, verdict=True),
        _rewards(form_p=1, acc_r=0.5, verdict=False),
        _rewards(form_r=1),
        _rewards(acc_p=1, form_p=1, verdict=True),
    ]
    s = b.reward_summary()
    assert s["reward_perception"] == pytest.approx((2.2 + 1 + 0 + 2) / 4)
    assert s["reward_reasoning"] == pytest.approx((2.2 + 0.5 + 1 + 0) / 4)
    assert s["accuracy"] == pytest.approx(1.5 / 4) and s["accuracy_perception"] == pytest.approx(2 / 4)
    assert s["format_perception"] == pytest.approx(3 / 4) and s["format_reasoning"] == pytest.approx(2 / 4)
    assert s["length_perception"] == pytest.approx(0.2 / 4) and s["length_reasoning"] == pytest.approx(0.2 / 4)
    assert s["judge_yes_rate"] == pytest.approx(2 / 3)  # of the 3 judged, not of all 4
    assert s["accuracy/OCR"] == pytest.approx(0.75) and s["accuracy/numerical"] == 0.0
    assert s["response_tokens"] == pytest.approx((1 + 2 + 2 + 3) / 4)


# -- advantages ----------------------------------------------------------------------------------------------------
def test_nearly_equal_rewards_are_a_flat_group():
    """Float noise is no signal: catches the eps test flipped or dropped (noise would become +-1 advantages)."""
    adv, flat = group_advantages(torch.tensor([1.0, 1.0 + 1e-7, 0.0, 1.0]), 2)
    assert flat == 1 and adv[:2].tolist() == [0.0, 0.0] and adv[2:].tolist() == pytest.approx([-1, 1], abs=1e-4)


def test_excluded_perception_under_pa_grpo_leaves_reasoning_alone():
    """missing_verdict=exclude with PA-GRPO (the default): the excluded rollout gets A_P = 0 and leaves the
    perception group's statistics, but keeps its reasoning advantage. Catches the validity mask passed to the
    reasoning group too, or not to the perception one."""
    valid = torch.tensor([True, True, False, True])
    a_p, a_r, stats = process_advantages(
        torch.tensor([1.0, 0.0, 5.0, 1.0]), torch.tensor([1.0, 0.0, 1.0, 0.0]), 4, "pa_grpo", valid
    )
    assert a_p[2] == 0 and a_p[[0, 1, 3]].tolist() == pytest.approx([0.7071, -1.4142, 0.7071], abs=1e-3)
    assert a_r.tolist() == pytest.approx([1, -1, 1, -1], abs=1e-4)
    assert stats == {"flat_groups_perception": 0, "flat_groups_reasoning": 0}


# -- micro-batches -------------------------------------------------------------------------------------------------
def test_micro_batch_helpers_at_their_boundaries():
    """Catches token_budget dropping a row longer than the budget or looping on parts == rows, split refusing
    len == parts or cutting unevenly, token_share dividing by the wrong set, and pad_to padding on the left or
    copying needlessly."""
    assert token_budget([0, 1], [500, 20], budget=100) == [[0], [1]]  # a row over the budget goes alone
    assert token_budget([0, 1, 2], [5, 5, 5], budget=100, parts=3) == [[0], [1], [2]]
    with pytest.raises(ValueError, match="2 rows cannot fill 3 micro-batches"):
        token_budget([0, 1], [5, 5], budget=100, parts=3)
    assert split([1, 2, 3], 3) == [[1], [2], [3]]
    assert split(list(range(7)), 3) == [[0, 1], [2, 3, 4], [5, 6]]
    with pytest.raises(ValueError, match="cannot fill learner.grad_accum=4"):
        split([1, 2, 3], 4)
    tokens = torch.tensor([10.0, 30.0, 60.0, 100.0])
    assert token_share(tokens, [1, 2], [0, 1, 2], "token_mean") == pytest.approx(0.9)
    assert token_share(tokens, [1, 2], [0, 1, 2], "seq_mean_token_mean") == pytest.approx(2 / 3)
    assert token_share(torch.zeros(2), [0], [0, 1], "token_mean") == 0.0  # no tokens: no division by zero
    t = torch.tensor([[1, 2]])
    assert pad_to(t, 2) is t and pad_to(t, 4).tolist() == [[1, 2, 0, 0]]


# -- parsing, rewards, the mismatch rules --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, perception_ok, reasoning_ok",
    [
        ("<observation>o</observation></observation><think>t</think><answer>a</answer>", False, True),  # repeated close
        ("<observation>o</observation><think>t</think></answer><answer>a</answer>", True, False),  # stray close first
        ("<observation>o</observation>\n\n<think>t</think>\n<answer>a</answer>\n", True, True),  # whitespace is fine
        ("<observation>o</observation>x<think>t</think><answer>a</answer>", True, False),  # text between processes
        ("<observation>o</observation><think>t</think><answer>a</answer>x", True, False),  # text after the answer
        ("x<observation>o</observation><think>t</think><answer>a</answer>", False, True),  # a preamble
    ],
)
def test_format_with_stray_or_repeated_tags(text, perception_ok, reasoning_ok):
    p = parse_response(text)
    assert (p.perception_format, p.reasoning_format) == (perception_ok, reasoning_ok)


def test_length_bonus_needs_the_format_even_when_accurate():
    """Catches the length rule checking accuracy alone: an accurate answer outside its tags gets no bonus."""
    parsed = parse_response("<observation>o</observation><think>t</think> 5")  # no answer tags
    r = process_rewards(parsed, "5", "numerical", True, 200, 400, LengthRule())
    assert r.form_r == 0 and r.len_r == 0
    r = process_rewards(
        parse_response("<observation>o</observation><think>t</think><answer>5</answer>"),
        "5",
        "numerical",
        True,
        128,
        512,
        LengthRule(),
    )
    assert (r.len_p, r.len_r) == (0.2, 0.2)  # both ends of the windows are inside them
    r = process_rewards(
        parse_response("<observation>o</observation><think>t</think><answer>5</answer>"),
        "5",
        "numerical",
        True,
        127,
        513,
        LengthRule(),
    )
    assert (r.len_p, r.len_r) == (0.0, 0.0)


@pytest.mark.parametrize(
    "output, ptype, expect",
    [
        ("<think>it is -3</think><answer>-3</answer>", "numerical", False),  # negative numbers keep their sign
        ("<think>it is -3</think><answer>3</answer>", "numerical", True),
        ("<think>about 2.004</think><answer>2.0</answer>", "regression", False),  # equal at 2 decimals
        ("<think>about 2.006</think><answer>2.0</answer>", "regression", True),
        ("<think>so the ANSWER is b? no, Option C</think><answer>C</answer>", "multiple choice", False),  # cue's case
        ("<think>the answer is B</think><answer>(C) red</answer>", "multiple choice", True),
        ("<think>no letter here</think><answer>C</answer>", "multiple choice", None),
        ("<think>t</think><answer>  </answer>", "numerical", None),
    ],
)
def test_think_answer_mismatch_rules(output, ptype, expect):
    assert think_answer_mismatch(output, ptype) is expect


# -- M-RoPE and the sampler -----------------------------------------------------------------------------------------
def test_mrope_with_a_non_integer_temporal_factor():
    """Temporal positions are floor(i_t * second_per_grid * tokens_per_second): catches rounding instead of
    flooring, the factor skipped when it is not 1, and text resuming at the wrong position after the block."""
    V = 9
    ids = [1, V, V, V, V, 2]  # t=4 temporal patches of 1x1 merged tokens (grid h = w = 2 before the merge)
    pos, delta = mrope_positions(
        ids,
        video_grid_thw=[[4, 2, 2]],
        second_per_grid_ts=[0.375],
        image_token_id=8,
        video_token_id=V,
        tokens_per_second=2.0,
    )  # factor 0.75
    assert pos[0].tolist() == [0, 1, 1, 2, 3, 4]  # 1 + floor([0, .75, 1.5, 2.25])
    assert pos[1].tolist() == [0, 1, 1, 1, 1, 4] and delta == 5 - 6


def test_resuming_the_order_in_a_later_epoch():
    """Catches a resumed order that rebuilds epoch 0's permutation (the state's epoch ignored)."""
    a = IndexOrder(5, seed=2)
    a.take(12)  # two full epochs and 2 rows into the third
    state = a.state()
    assert state == {"epoch": 2, "position": 2}
    b = IndexOrder(5, seed=2, **state)
    assert b.take(6) == a.take(6)
    with pytest.raises(ValueError, match="outside an epoch"):
        IndexOrder(5, position=6)
    IndexOrder(5, position=5)  # the end of an epoch is a valid state
