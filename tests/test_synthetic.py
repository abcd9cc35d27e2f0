import json

import numpy as np
import pytest

from videoqa.prompts import chat_messages, sft_target, user_text
from videoqa.schema import load_samples
from videoqa.synthetic import COLORS, TASKS, make_synthetic
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
        # the observation states exactly the facts the answer needs
        needed = {
            "direction": [facts.get("target"), facts.get("start"), facts.get("end")],
            "count": [facts.get("shape"), str(facts.get("count"))],
            "text": [facts.get("text")],
            "travel": [facts.get("target"), f"{facts.get('start_pct')}%", f"{facts.get('end_pct')}%"],
        }[facts["kind"]]
        for word in needed:
            assert word in c.observation, (word, c.observation)
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
