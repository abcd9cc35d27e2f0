"""Benchmark scoring (Video-R1's ``eval_bench.py`` rules) against hand-computed values, and the think-answer
mismatch check."""

import numpy as np
import pytest
import torch

from rewards import accuracy_reward, eval_score, mean_relative_accuracy, predicted_answer, think_answer_mismatch

MC, NUM, REG, OCR, FREE = "multiple choice", "numerical", "regression", "OCR", "free-form"


@pytest.mark.parametrize(
    "output, solution, expected",
    [
        ("<think>x</think><answer> B </answer>", "<answer>B</answer>", 1.0),
        ("<answer>B.</answer>", "<answer>B</answer>", 0.0),  # exact after stripping, nothing more
        ("B", "<answer>B</answer>", 1.0),  # no tags: the whole output is the answer
        ("  B\n", "<answer>B</answer>", 1.0),
        ("The answer is B", "<answer>B</answer>", 0.0),
        ("<answer></answer>", "<answer>B</answer>", 0.0),  # empty tags: the whole output, which is not "B"
        ("<answer>A</answer><answer>B</answer>", "<answer>B</answer>", 0.0),  # the first pair counts
        ("<answer>B</answer>", "B", 1.0),  # a solution without tags is the answer itself
    ],
)
def test_multiple_choice(output, solution, expected):
    assert eval_score(output, solution, MC) == expected


@pytest.mark.parametrize(
    "pred, truth, expected",
    [
        ("3", "3", 1.0),
        ("3.0", "3", 0.0),  # exactly one side has a decimal point
        ("3", "3.0", 0.0),
        ("3.00", "3.001", 1.0),  # equal after rounding to 2 decimals
        ("3.01", "3.001", 0.0),
        ("1,000", "1000", 0.0),  # a comma counts as a decimal mark for the check
        ("1,000", "1,000.0", 1.0),  # both have one: commas removed, 1000 == 1000
        ("-2", "-2", 1.0),
        ("two", "2", 0.0),
    ],
)
def test_numerical(pred, truth, expected):
    assert eval_score(f"<answer>{pred}</answer>", f"<answer>{truth}</answer>", NUM) == expected


@pytest.mark.parametrize(
    "pred, truth, expected",
    [
        ("10", "10", 1.0),
        ("12", "10", 0.6),  # relative error 0.2: below 1 - t for t = 0.50 .. 0.75 (6 of 10), not below 0.2 itself
        ("14", "10", 0.2),  # 0.4 < 0.5, 0.45 only
        ("15", "10", 0.0),  # 0.5 is not < 0.5: strict
        ("8", "10", 0.6),  # symmetric in the error's sign
        ("-12", "-10", 0.6),  # negative truths use |gt|
        ("12", "-10", 0.0),
        ("0", "0", 1.0),  # gt = 0: only an exact 0 matches (the 1e-8 keeps the error finite)
        ("0.001", "0", 0.0),
        ("1,100", "1,000", 0.9),  # commas removed; 0.1 < float32(1 - 0.9) = 0.10000002, as in the torch code
        ("1e40", "10", 0.0),  # overflows float32: no crash, no credit
        ("nan", "10", 0.0),
        ("many", "10", 0.0),
    ],
)
def test_regression_is_mean_relative_accuracy(pred, truth, expected):
    assert eval_score(f"<answer>{pred}</answer>", f"<answer>{truth}</answer>", REG) == pytest.approx(expected)


def test_regression_without_tags_scores_the_whole_output():
    assert eval_score("12", "<answer>10</answer>", REG) == pytest.approx(0.6)
    assert eval_score("<think>12</think>", "<answer>10</answer>", REG) == 0.0  # the whole output is not a number


def _video_r1_mra(pred, target):
    """Video-R1's torch formula, written out here as the reference."""
    pred, target = torch.tensor(pred, dtype=torch.float32), torch.tensor(target, dtype=torch.float32)
    rel = torch.abs(pred - target) / (torch.abs(target) + 1e-8)
    thresholds = torch.arange(0.5, 0.95 + 0.05 / 2, 0.05, dtype=torch.float32)
    return (rel < (1 - thresholds)).float().mean().item()


def test_mra_matches_the_torch_formula_on_boundaries_and_random_values():
    rng = np.random.default_rng(0)
    truths = rng.uniform(-1000, 1000, 2000).round(1)
    preds = truths * (1 + rng.choice([-1, 1], 2000) * rng.integers(0, 21, 2000) * 0.05)  # errors on the thresholds
    pairs = list(zip(preds.tolist(), truths.tolist())) + [(0.0, 0.0), (1e-9, 0.0), (3.0, 7.0)]
    for p, t in pairs:
        assert mean_relative_accuracy(p, t) == pytest.approx(_video_r1_mra(p, t), abs=1e-6), (p, t)


def test_ocr_and_free_form_use_the_training_functions():
    for ptype, pred, truth in ((OCR, "STOP HERE", "STOP THERE"), (FREE, "a red ball moves left", "the red ball moves")):
        assert eval_score(f"<answer>{pred}</answer>", truth, ptype) == accuracy_reward(pred, truth, ptype)
    assert eval_score("STOP", "STOP", OCR) == 1.0  # without tags: the whole output


def test_unknown_problem_type_is_an_error():
    with pytest.raises(ValueError, match="unknown problem_type"):
        eval_score("<answer>B</answer>", "B", "yes/no")


def test_predicted_answer():
    assert predicted_answer("<answer>\n 42 \n</answer>") == "42"
    assert predicted_answer("no tags at all") == "no tags at all"


@pytest.mark.parametrize(
    "output, ptype, expected",
    [
        ("<think>So the answer is B.</think><answer>B</answer>", MC, False),
        ("<think>So the answer is B.</think><answer>C</answer>", MC, True),
        ("<think>Option (A) fits, but option C is better.</think><answer>A</answer>", MC, True),  # the last one counts
        ("<think>choice: D</think><answer>D. blue</answer>", MC, False),
        ("<think>The shape moves. Answer is a guess.</think><answer>B</answer>", MC, None),  # no letter named
        ("<think>3 circles plus 2 squares gives 5</think><answer>5</answer>", NUM, False),
        ("<think>3 circles plus 2 squares gives 5</think><answer>6</answer>", NUM, True),
        ("<think>about 1,200.5 pixels</think><answer>1200.5</answer>", REG, False),
        ("<think>no numbers here</think><answer>4</answer>", NUM, None),
        ("<answer>B</answer>", MC, None),  # no think
        ("<think>the answer is B</think>", MC, None),  # no answer
        ("<think>it reads STOP</think><answer>GO</answer>", OCR, None),  # free text: not told
    ],
)
def test_think_answer_mismatch(output, ptype, expected):
    assert think_answer_mismatch(output, ptype) is expected
