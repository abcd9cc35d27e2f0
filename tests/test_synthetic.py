import json

import numpy as np
import pytest

from videoqa.prompts import chat_messages, sft_target, user_text
from videoqa.schema import load_samples
from toy.synthetic import (
    COLORS,
    DIRECTIONS,
    TASKS,
    SyntheticTask,
    make_synthetic,
    observation_suffices,
    parse_mix,
    render_clip,
    type_sequence,
)
from videoqa.validate import validate_file
from videoqa.video import FrameSampling, load_video


def _centroid(frame: np.ndarray, rgb) -> np.ndarray | None:
    mask = np.abs(frame.astype(int) - np.array(rgb)).sum(-1) < 60
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

    s = Sample(
        "1",
        "Which direction does the red square move?",
        "video",
        "multiple choice",
        "<answer>B</answer>",
        "x.mp4",
        options=["A. left", "B. right"],
    )
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
    # Video-R1's evaluation prompt: their question layout ("Options:" straight after the problem), think/answer only
    r1 = user_text(s, "video-r1")
    assert r1.startswith("Which direction does the red square move?Options:\nA. left\nB. right\n\nPlease think")
    assert "<observation>" not in r1 and r1.endswith(
        "single option letter (e.g., A, B, C, D, etc.) within the <answer> </answer> tags."
    )
    assert "from the image/video" in user_text(Sample("3", "Read it.", "video", "OCR", "STOP", "x.mp4"), "video-r1")
    with pytest.raises(ValueError, match="unknown prompt style"):
        user_text(s, "r1")


def test_manifest(synthetic_dir):
    m = json.loads((synthetic_dir / "manifest.json").read_text())
    assert m["n"] == 30 and m["seed"] == 0 and m["style"] == "varied" and m["mix"] is None


# -- the demo style -------------------------------------------------------------------------------------------
DEMO_OPTIONS = ["A. left", "B. right", "C. up", "D. down"]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    make_synthetic(d, n=20, seed=3, n_eval=5, style="demo", progress=False)
    return d


def test_demo_direction_scenes():
    """One large mover (radius size/6) crossing 70% of the frame; options always in the same order."""
    task = SyntheticTask(11, style="demo")
    seen = set()
    for _ in range(40):
        scene, d = task.direction_mc()
        assert len(scene.movers) == 1
        (m,) = scene.movers
        assert m.r == 112 // 6 and (m.dx == 0) != (m.dy == 0)
        assert abs(abs(m.dx + m.dy) * (task.frames - 1) / task.size - 0.70) < 1e-9
        assert d["options"] == DEMO_OPTIONS
        assert DEMO_OPTIONS["ABCD".index(d["answer"])].endswith(d["facts"]["direction"])
        seen.add(d["facts"]["direction"])
    assert seen == set(DIRECTIONS)  # every answer letter occurs
    # free-form and regression use the same one-large-shape recipe
    for make in (task.describe_free_form, task.travel_regression):
        scene, _ = make()
        assert len(scene.movers) == 1 and scene.movers[0].r == 112 // 6


def test_demo_rows_valid_and_pixels(demo_dir):
    from videoqa.schema import load_samples

    for name in ("train.json", "cot.json", "eval.json"):
        assert validate_file(demo_dir / name)[1] == []
    rows = load_samples(demo_dir / "cot.json")
    assert {r.problem_type for r in rows} == set(TASKS)  # no mix: round-robin, as in the varied style
    checked = 0
    for s in rows:
        assert observation_suffices(s.extra["facts"], s.observation)
        if s.problem_type != "multiple choice":
            continue
        assert s.options == DEMO_OPTIONS
        clip = load_video(demo_dir / s.path, FrameSampling(nframes=16, max_pixels=112 * 112))
        present = [c for c, rgb in COLORS.items() if _centroid(clip.frames[0], rgb) is not None]
        assert present == [s.extra["facts"]["target"].split()[0]], present  # one shape only
        rgb = COLORS[present[0]]
        move = _centroid(clip.frames[-1], rgb) - _centroid(clip.frames[0], rgb)
        # ~70% of the frame; a large shape near the border is clipped a little, which shifts its centroid
        assert abs(np.abs(move).max() / 112 * 100 - 70) < 8, (s.problem_id, move)
        checked += 1
    assert checked >= 3


def test_style_varied_is_the_default_and_styles_differ(tmp_path):
    make_synthetic(tmp_path / "a", n=6, seed=2, progress=False)
    make_synthetic(tmp_path / "b", n=6, seed=2, style="varied", progress=False)
    make_synthetic(tmp_path / "c", n=6, seed=2, style="demo", progress=False)
    for name in ("train.json", "cot.json", "eval.json"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    assert (tmp_path / "a" / "train.json").read_text() != (tmp_path / "c" / "train.json").read_text()
    with pytest.raises(ValueError, match="unknown synthetic style"):
        SyntheticTask(0, style="fancy")


def test_render_clip_matches_the_scene():
    scene, d = SyntheticTask(4, frames=8, size=56, style="demo").direction_mc()
    clip = render_clip(scene, 8, 56)
    assert clip.shape == (8, 56, 56, 3) and clip.dtype == np.uint8
    rgb = COLORS[d["facts"]["target"].split()[0]]
    move = _centroid(clip[-1], rgb) - _centroid(clip[0], rgb)
    axis = int(np.argmax(np.abs(move)))
    seen = ("left", "right")[int(move[0] > 0)] if axis == 0 else ("up", "down")[int(move[1] > 0)]
    assert seen == d["facts"]["direction"]


# -- the problem-type mix ----------------------------------------------------------------------------------
def test_type_sequence_follows_the_weights():
    mix = {"multiple choice": 6, "OCR": 1, "free-form": 1, "numerical": 1, "regression": 1}
    seq = type_sequence(200, seed=7, mix=mix)
    counts = {t: seq.count(t) for t in TASKS}
    assert counts == {"multiple choice": 120, "numerical": 20, "OCR": 20, "free-form": 20, "regression": 20}
    assert seq == type_sequence(200, seed=7, mix=mix)  # deterministic for a seed
    assert seq != type_sequence(200, seed=8, mix=mix)  # and shuffled by it
    assert seq[:20].count("multiple choice") not in (0, 20)  # interleaved, not in blocks
    odd = type_sequence(7, seed=0, mix={"multiple choice": 2, "OCR": 1})
    assert sorted(odd).count("multiple choice") in (4, 5) and set(odd) == {"multiple choice", "OCR"}
    assert type_sequence(7, seed=0, mix=None) == [TASKS[i % 5] for i in range(7)]
    for bad in ({"counting": 1}, {"OCR": -1}, {"OCR": 0}):
        with pytest.raises(ValueError, match="bad mix"):
            type_sequence(5, 0, bad)


def test_mix_in_make_synthetic(tmp_path):
    from videoqa.schema import load_samples

    mix = {"multiple choice": 3, "numerical": 1}
    make_synthetic(tmp_path / "a", n=12, seed=9, n_eval=10, mix=mix, progress=False)
    make_synthetic(tmp_path / "b", n=12, seed=9, n_eval=10, mix=mix, progress=False)
    train = [r.problem_type for r in load_samples(tmp_path / "a" / "train.json")]
    assert sorted(train) == ["multiple choice"] * 9 + ["numerical"] * 3
    cot = [r.problem_type for r in load_samples(tmp_path / "a" / "cot.json")]
    assert cot == train
    evals = [r.problem_type for r in load_samples(tmp_path / "a" / "eval.json")]
    assert evals == [TASKS[i % 5] for i in range(10)]  # eval: all five types, round-robin, whatever the mix
    for name in ("train.json", "cot.json", "eval.json"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert m["mix"] == {"multiple choice": 3.0, "numerical": 1.0} and m["style"] == "varied"
    # eval_mix weights the eval split (the demo's held-out rows towards its trained type); train is unchanged
    make_synthetic(tmp_path / "c", n=12, seed=9, n_eval=10, mix=mix, eval_mix={"multiple choice": 4, "OCR": 1})
    weighted = [r.problem_type for r in load_samples(tmp_path / "c" / "eval.json")]
    assert sorted(weighted) == ["OCR"] * 2 + ["multiple choice"] * 8
    assert (tmp_path / "c" / "train.json").read_text() == (tmp_path / "a" / "train.json").read_text()


def test_parse_mix():
    text = "multiple choice=6,OCR=1,free-form=1,numerical=1,regression=1"
    assert parse_mix(text) == {
        "multiple choice": 6.0,
        "OCR": 1.0,
        "free-form": 1.0,
        "numerical": 1.0,
        "regression": 1.0,
    }
    assert parse_mix(" OCR = 2 , ") == {"OCR": 2.0}
    for bad in ("OCR", "OCR=x", "counting=1", "OCR=0", ""):
        with pytest.raises(ValueError, match="bad mix"):
            parse_mix(bad)


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
