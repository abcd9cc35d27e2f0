import json

import numpy as np
import pytest

from videoqa.prompts import chat_messages, sft_target, user_text
from videoqa.schema import load_samples
from videoqa.synthetic import COLORS, TASKS, make_synthetic, observation_suffices
from videoqa.validate import validate_file
from videoqa.video import FrameSampling, load_video


def _centroid(frame: np.ndarray, rgb) -> np.ndarray | None:
    mask = (np.abs(frame.astype(int) - np.array(rgb)).sum(-1) < 60)
    if mask.sum() < 4:
        return None
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def test_deterministic_given_seed(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    make_synthetic(a, n=10, seed=5, progress=False)
    make_synthetic(b, n=10, seed=5, progress=False)
    make_synthetic(c, n=10, seed=6, progress=False)
    for name in ("train.json", "cot.json", "eval.json"):
        assert (a / name).read_text() == (b / name).read_text()
    assert (a / "train.json").read_text() != (c / "train.json").read_text()
    first = load_samples(a / "train.json")[0]
    fa = load_video(a / first.path, FrameSampling(nframes=4)).frames
    fb = load_video(b / first.path, FrameSampling(nframes=4)).frames
    assert np.array_equal(fa, fb)


def test_all_problem_types_valid_and_cot(synthetic_dir):
    rows = load_samples(synthetic_dir / "train.json")
    assert {r.problem_type for r in rows} == set(TASKS)
    for name in ("train.json", "cot.json", "eval.json", "train.parquet"):
        n, problems = validate_file(synthetic_dir / name)
        assert n > 0 and problems == []
    cot = {s.problem_id: s for s in load_samples(synthetic_dir / "cot.json")}
    assert set(cot) == {r.problem_id for r in rows}
    for r in rows:
        assert r.observation is None and r.process is None  # the RL file carries no CoT
        c = cot[r.problem_id]
        assert c.observation.startswith("Based on the question, I need to notice")
        assert c.process.startswith("Based on the observations,")
        facts = c.extra["facts"]
        # the observation states exactly the facts the answer needs, which the oracle judge checks
        assert observation_suffices(facts, c.observation), c.observation
        target = sft_target(c)
        assert target.startswith("<observation>") and target.endswith(f"<answer>{c.answer}</answer>")


def test_answers_follow_from_the_pixels(synthetic_dir):
    """The direction and travel facts are what the video shows: track the target's colour across frames."""
    checked = 0
    for s in load_samples(synthetic_dir / "cot.json"):
        facts = s.extra["facts"]
        if s.data_type != "video" or facts["kind"] not in ("direction", "travel"):
            continue
        clip = load_video(synthetic_dir / s.path, FrameSampling(nframes=16, max_pixels=112 * 112))
        color = facts["target"].split()[0]
        p0, p1 = _centroid(clip.frames[0], COLORS[color]), _centroid(clip.frames[-1], COLORS[color])
        assert p0 is not None and p1 is not None, s.problem_id
        move = p1 - p0
        if facts["kind"] == "direction":
            axis = int(np.argmax(np.abs(move)))
            seen = ("left", "right")[int(move[0] > 0)] if axis == 0 else ("up", "down")[int(move[1] > 0)]
            assert seen == facts["direction"], (s.problem_id, move)
            letter = s.answer if s.problem_type == "multiple choice" else None
            if letter:
                assert s.options["ABCD".index(letter)].endswith(facts["direction"])
        else:
            travelled = np.abs(move).max() / 112 * 100
            assert abs(travelled - facts["travel_pct"]) < 6, (s.problem_id, travelled)
        checked += 1
    assert checked >= 6


def test_prompt_format():
    from videoqa.schema import Sample

    s = Sample("1", "Which direction does the red square move?", "video", "multiple choice", "<answer>B</answer>",
               "x.mp4", options=["A. left", "B. right"])
    text = user_text(s)
    assert "Options:\nA. left\nB. right" in text
    assert text.index("<observation>") < text.index("<think>") < text.index("<answer>")
    assert "Based on the question, I need to notice" in text and "single option letter" in text
    msgs = chat_messages(s)
    assert msgs[0]["content"][0] == {"type": "video"}
    img = Sample("2", "How many?", "image", "numerical", "<answer>2</answer>", "x.png")
    assert chat_messages(img)[0]["content"][0] == {"type": "image"} and "image" in user_text(img)
    with pytest.raises(ValueError, match="needs 'observation'"):
        sft_target(s)


def test_manifest(synthetic_dir):
    m = json.loads((synthetic_dir / "manifest.json").read_text())
    assert m["n"] == 30 and m["seed"] == 0


def test_oracle_judge_needs_the_facts_in_order():
    facts = {"kind": "direction", "target": "red square", "start": "left", "end": "right", "direction": "right"}
    assert observation_suffices(facts, "The red square starts near the left and ends near the right of the frame.")
    assert not observation_suffices(facts, "The red square starts near the right and ends near the left.")
    assert not observation_suffices(facts, "Something moves from the left to the right.")
    count = {"kind": "count", "shape": "circle", "count": 3}
    assert observation_suffices(count, "There are 3 circles: a red one, a blue one and a green one.")
    assert not observation_suffices(count, "There are 2 circles.")
    assert observation_suffices({"kind": "text", "text": "CAT"}, "The word is cat.")
    travel = {"kind": "travel", "target": "blue circle", "start_pct": 20, "end_pct": 60, "travel_pct": 40}
    assert observation_suffices(travel, "The blue circle starts at 20% of the frame width and ends at 60%.")
    assert not observation_suffices(travel, "The blue circle moves a bit.")
    with pytest.raises(ValueError, match="unknown synthetic fact kind"):
        observation_suffices({"kind": "colour"}, "x")
