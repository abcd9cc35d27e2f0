"""The CoT funnel's decisions (pure): template, answer accuracy >= 0.6, judge Yes; the best passing sample wins."""

import pytest

from videoqa.cot_funnel import Decision, decide, funnel_table, screen
from videoqa.schema import Sample

MC = Sample("1", "Which way?", "video", "multiple choice", "<answer>B</answer>", "v.mp4", ["A. left", "B. right"])
NUM = Sample("2", "How many?", "video", "regression", "<answer>10</answer>", "v.mp4")


def cot(answer, obs="I see a square.", think="It moves right."):
    return f"<observation>{obs}</observation><think>{think}</think><answer>{answer}</answer>"


def test_screen_checks_the_template_then_the_accuracy():
    good = screen(MC, cot("B"))
    assert good.format_ok and good.accuracy == 1.0 and good.observation == "I see a square."
    assert good.think == "It moves right." and good.answer == "B"
    assert screen(MC, cot("A")).accuracy == 0.0
    no_obs = screen(MC, "<think>x</think><answer>B</answer>")  # a right answer without the observation step
    assert not no_obs.format_ok and no_obs.accuracy == 0.0
    assert screen(NUM, cot("8")).accuracy == pytest.approx(0.8)  # the task's accuracy reward: 1 - |8-10|/10


@pytest.mark.parametrize(
    "texts, verdicts, reason, index",
    [
        ([cot("B")], [True], "kept", 0),
        ([cot("B")], [False], "judge_no", 0),
        ([cot("B")], [None], "judge_missing", 0),  # no verdict decides nothing: retried
        ([cot("A")], [None], "accuracy", 0),
        (["no tags"], [None], "template", 0),
        (["no tags", cot("A"), cot("B")], [None, None, True], "kept", 2),
        ([cot("B"), cot("B", obs="other")], [False, True], "kept", 1),  # the one the judge accepted
        ([cot("B"), cot("B", obs="other")], [False, None], "judge_missing", 1),  # one still unanswered: ask again
    ],
)
def test_decide(texts, verdicts, reason, index):
    d = decide([screen(MC, t) for t in texts], verdicts, 0.6)
    assert (d.reason, d.index) == (reason, index)
    assert d.final == (reason != "judge_missing")


def test_the_threshold_is_inclusive_and_the_most_accurate_passing_sample_wins():
    cands = [screen(NUM, cot(a)) for a in ("6", "9", "8", "11")]  # accuracies 0.6, 0.9, 0.8, 0.9
    assert decide(cands, [True] * 4, 0.6).index == 1  # 0.9, the first of the tie
    assert decide(cands[:1], [True], 0.6).reason == "kept"  # 0.6 >= 0.6
    assert decide(cands[:1], [True], 0.61).reason == "accuracy"
    assert decide(cands, [True, False, True, False], 0.6).index == 2  # the best among the accepted


def test_funnel_table_counts_each_step():
    ds = [
        Decision("kept", 0, (True, True, True)),
        Decision("judge_no", 0, (True, True, False)),
        Decision("accuracy", 0, (True, False, False)),
        Decision("template", 0, (False, False, False)),
    ]
    table = dict(funnel_table(5, ds, {"malformed": 1}))
    assert table["rows in"] == 5
    assert [table[f"passed {s}"] for s in ("template", "accuracy", "judge")] == [3, 2, 1]
    assert table["kept"] == 1 and table["dropped: judge_no"] == 1 and table["skipped: malformed"] == 1
