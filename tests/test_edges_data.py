"""Edge cases found by mutation testing (see test_edges.py), continued: the rollout log, M-RoPE from a model
config, prompts, data files and frame sampling. Each test names the single-point bug it catches."""

from types import SimpleNamespace

import pytest
import torch

from tests.test_edges import _batch, _rewards


# -- the rollout log, M-RoPE from a model config, prompts, data files -------------------------------------------------
def test_log_rows_write_each_rollouts_own_fields():
    """Every column of the rollout log from distinct values: catches a column reading another rollout's or another
    field's value (acc_p under acc_r), sample_index counting across groups, and advantages written off by one."""
    b = _batch([4, 7])
    b.results[1].worker = "w1"
    b.rewards = [
        _rewards(acc_p=1, form_p=1, len_p=0.2, acc_r=0.5, form_r=1, len_r=0.2, verdict=True),
        _rewards(form_p=1, verdict=False, perception_valid=False),
        _rewards(acc_r=1),
        _rewards(form_r=1),
    ]
    rows = b.log_rows({"advantage_perception": [0.1, 0.2, 0.3, 0.4], "advantage_reasoning": [1, 2, 3, 4]})
    first = rows[0]
    assert {
        k: first[k]
        for k in (
            "step",
            "prompt_id",
            "row",
            "problem_type",
            "sample_index",
            "response",
            "response_tokens",
            "finish_reason",
            "weight_version",
            "worker",
        )
    } == dict(
        step=3,
        prompt_id="p0",
        row=0,
        problem_type="OCR",
        sample_index=0,
        response="x",
        response_tokens=1,
        finish_reason="stop",
        weight_version=4,
        worker="w0",
    )
    assert (first["r_perception"], first["r_reasoning"]) == (pytest.approx(2.2), pytest.approx(1.7))
    assert [first[k] for k in ("acc_p", "form_p", "len_p", "acc_r", "form_r", "len_r")] == [1, 1, 0.2, 0.5, 1, 0.2]
    assert first["verdict"] is True and first["perception_valid"] is True
    assert rows[1]["verdict"] is False and rows[1]["perception_valid"] is False and rows[1]["sample_index"] == 1
    assert [r["sample_index"] for r in rows] == [0, 1, 0, 1] and [r["row"] for r in rows] == [0, 0, 1, 1]
    assert [r["worker"] for r in rows] == ["w0", "w0", "w1", "w1"] and rows[3]["weight_version"] == 7
    assert [r["response_tokens"] for r in rows] == [1, 2, 2, 3]
    assert [r["advantage_perception"] for r in rows] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert [r["advantage_reasoning"] for r in rows] == [1, 2, 3, 4]
    assert "advantage_perception" not in b.log_rows()[0]


def test_model_positions_reads_the_config_and_the_processor_outputs():
    """Catches the image and video grids swapped, the merge size or tokens_per_second not read from the config,
    and second_per_grid_ts ignored: a video of 2 temporal patches 1.5 s apart at 2 tokens/s is 3 positions apart."""
    from learner.mrope import model_positions

    config = SimpleNamespace(
        model_type="qwen2_5_vl",
        image_token_id=8,
        video_token_id=9,
        vision_config=SimpleNamespace(spatial_merge_size=2, tokens_per_second=2),
    )
    ids = [1, 8, 2, 9, 9, 3]
    out = {
        "image_grid_thw": torch.tensor([[1, 2, 2]]),
        "video_grid_thw": torch.tensor([[2, 2, 2]]),
        "second_per_grid_ts": [1.5],
    }
    pos = model_positions(config, ids, out)
    assert pos.shape == (3, 1, 6)
    assert pos[0, 0].tolist() == [0, 1, 2, 3, 6, 7] and pos[1, 0].tolist() == [0, 1, 2, 3, 3, 7]
    text_only = model_positions(config, [1, 2, 3], {})
    assert text_only[:, 0].tolist() == [[0, 1, 2]] * 3
    # Qwen3-VL (the family read from config.model_type): each temporal patch its own block at temporal position
    # 0, the next one starting after it (its timestamp text would sit between them); no time scaling
    config.model_type = "qwen3_vl"
    assert model_positions(config, ids, out)[0, 0].tolist() == [0, 1, 2, 3, 4, 5]


def _sample(**kw):
    from videoqa.schema import Sample

    base = dict(
        problem_id="q1",
        problem=" What moves? ",
        data_type="video",
        problem_type="multiple choice",
        solution="<answer>B</answer>",
        path="v.mp4",
        options=["A. a cat", "B. a dog"],
    )
    return Sample(**{**base, **kw})


def test_prompts_are_the_trained_text():
    """The prompt is part of a trained model's contract: any change to its wording, the options' layout, the media
    word or the per-type answer format is a different prompt (caught here word for word)."""
    from videoqa.prompts import chat_messages, question_text, sft_target, user_text

    s = _sample()
    assert question_text(s) == "What moves?\nOptions:\nA. a cat\nB. a dog"
    assert question_text(_sample(problem_type="OCR")) == "What moves?"
    assert user_text(s) == (
        "What moves?\nOptions:\nA. a cat\nB. a dog\n"
        "First describe what you observe in the video that is needed to answer the question, inside "
        '<observation> </observation> tags, beginning with "Based on the question, I need to notice". '
        "Then reason step by step from those observations inside <think> </think> tags, beginning with "
        '"Based on the observations,". Finally give your answer inside <answer> </answer> tags.'
        " Please provide only the single option letter (e.g., A, B, C, D, etc.) within the <answer> </answer> tags."
    )
    ocr = user_text(_sample(problem_type="OCR", data_type="image"))
    assert "observe in the image" in ocr and ocr.endswith(
        " Please transcribe text from the image clearly and provide your text answer within the <answer> </answer> tags."
    )
    r1 = user_text(s, "video-r1")
    assert r1.startswith(
        " What moves? Options:\nA. a cat\nB. a dog\n\nPlease think about this question as if you "
        "were a human pondering deeply."
    )
    assert (
        "Provide your detailed reasoning between the <think> and </think> tags, and then give your final answer "
        "between the <answer> and </answer> tags. Please provide only the single option letter" in r1
    )
    assert user_text(_sample(problem_type="numerical"), "video-r1").endswith(
        " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags."
    )
    with pytest.raises(ValueError, match="unknown prompt style"):
        user_text(s, "chat")
    assert chat_messages(s) == [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": user_text(s)}]}
    ]
    assert chat_messages(s, "video-r1")[0]["content"][1]["text"] == r1
    row = _sample(observation=" I see a dog ", process=" so B ")
    assert sft_target(row) == "<observation>I see a dog</observation><think>so B</think><answer>B</answer>"
    with pytest.raises(ValueError, match="needs 'observation' and 'process'"):
        sft_target(_sample(observation="x"))


def test_loading_skips_malformed_rows_and_keeps_their_indices(tmp_path):
    """Catches max_rows applied after parsing (or off by one), indices renumbered after a skip, and a skipped row's
    message without the file's name."""
    import json

    from videoqa.schema import load_samples_skipping

    good = dict(
        problem_id="a", problem="q", data_type="video", problem_type="OCR", solution="<answer>x</answer>", path="v.mp4"
    )
    rows = [good, {"problem_id": "b"}, {**good, "problem_id": "c"}, {**good, "problem_id": "d"}]
    f = tmp_path / "rows.json"
    f.write_text(json.dumps(rows))
    samples, bad = load_samples_skipping(f, max_rows=3)
    assert [(i, s.problem_id) for i, s in samples] == [(0, "a"), (2, "c")]
    assert len(bad) == 1 and bad[0].startswith("rows.json: ")
    assert len(load_samples_skipping(f)[0]) == 3


def test_frame_sampling_of_the_video_and_eval_sections():
    """Catches fields passed to FrameSampling in the wrong order, and the eval section's widening (its frame count
    above the video section's maximum, its pixel budget below the video section's minimum) dropped."""
    from cluster.config import EvalSection, VideoSection

    v = VideoSection(fps=3.0, min_frames=2, max_frames=8, nframes=6, min_pixels=5 * 28 * 28, max_pixels=9 * 28 * 28)
    s = v.sampling()
    assert (s.fps, s.min_frames, s.max_frames, s.nframes, s.min_pixels, s.max_pixels) == (
        3.0,
        2,
        8,
        6,
        5 * 28 * 28,
        9 * 28 * 28,
    )
    e = EvalSection(nframes=12, max_pixels=4 * 28 * 28).sampling(v)
    assert (e.fps, e.min_frames, e.max_frames, e.nframes, e.min_pixels, e.max_pixels) == (
        3.0,
        2,
        12,
        12,
        4 * 28 * 28,
        4 * 28 * 28,
    )
    e = EvalSection(nframes=4, max_pixels=20 * 28 * 28).sampling(v)
    assert (e.max_frames, e.min_pixels) == (8, 5 * 28 * 28)


def test_process_rewards_as_a_dict():
    """Catches as_dict dropping a part or writing R_R as R_P."""
    d = _rewards(acc_p=1, form_p=1, len_p=0.2, acc_r=0.5, verdict=True).as_dict()
    assert d == dict(
        acc_p=1,
        form_p=1,
        len_p=0.2,
        acc_r=0.5,
        form_r=0.0,
        len_r=0.0,
        verdict=True,
        perception_valid=True,
        perception=pytest.approx(2.2),
        reasoning=0.5,
    )


def test_validate_file_row_by_row(tmp_path, synthetic_dir):
    """Each problem attached to its row: catches the id read from another key, duplicates missed, media checked
    for rows without a path or of another data type, media resolved against the wrong folder, and check_media
    ignored. A real video from the synthetic set is the good one; a missing file and a 1-row text file the bad."""
    import json
    import shutil

    from videoqa.validate import validate_file

    video = next(synthetic_dir.rglob("*.mp4"))
    (tmp_path / "media").mkdir()
    shutil.copy(video, tmp_path / "media" / "ok.mp4")
    (tmp_path / "media" / "bad.jpg").write_text("not an image")
    good = dict(
        problem_id="a",
        problem="q",
        data_type="video",
        problem_type="OCR",
        solution="<answer>x</answer>",
        path="media/ok.mp4",
    )
    rows = [
        good,
        {**good, "problem_id": "b", "path": "media/gone.mp4"},
        {**good},  # a duplicate id
        {**good, "problem_id": "c", "data_type": "image", "path": "media/bad.jpg"},
        {**good, "problem_id": "d", "data_type": "audio", "path": "media/gone.mp4"},
        ["not", "a", "row"],
        {k: v for k, v in good.items() if k != "problem_id"},
        {**good, "problem_id": "e", "path": "../ok.mp4"},  # outside the folder: what the loader skips
    ]
    f = tmp_path / "rows.json"
    f.write_text(json.dumps(rows))
    n, problems = validate_file(f)
    by_row = {}
    for p in problems:
        by_row.setdefault(p.row, []).append(p.reason)
    assert n == 8 and set(by_row) == {"b", "a", "c", "d", "#5", "#6", "e"}, by_row
    assert by_row["e"] == [
        f"{tmp_path / '..' / 'ok.mp4'} is outside {tmp_path} and the media roots (the loader skips it as 'outside')"
    ]
    assert by_row["b"] == [f"video not found: {tmp_path / 'media' / 'gone.mp4'}"]
    assert by_row["a"] == ["duplicate problem_id"]
    assert by_row["c"][0].startswith("corrupt image")
    assert by_row["d"] == ["unknown data_type 'audio' (expected video or image)"]  # not probed as media
    assert by_row["#5"] == ["row is a list, expected a JSON object"]
    assert by_row["#6"] == ["missing field 'problem_id'"]
    assert str(problems[0]) == f"row b: video not found: {tmp_path / 'media' / 'gone.mp4'}"
    _, unchecked = validate_file(f, check_media=False)
    assert {p.row for p in unchecked} == {"a", "d", "#5", "#6"}
    _, allowed = validate_file(f, media_roots=[tmp_path.parent])  # --media-root: the row is checked as media
    assert [p.reason for p in allowed if p.row == "e"] == [f"video not found: {tmp_path / '..' / 'ok.mp4'}"]
    (tmp_path / "elsewhere").mkdir()
    _, moved = validate_file(f, root=tmp_path / "elsewhere")  # media resolved against root, not the file's folder
    assert "a" in {p.row for p in moved} and any("ok.mp4" in p.reason for p in moved)
    (tmp_path / "empty.json").write_text("[]")
    n, problems = validate_file(tmp_path / "empty.json")
    assert n == 0 and len(problems) == 1 and problems[0].reason.endswith("has no rows")
