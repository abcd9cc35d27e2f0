import json

import pytest

from videoqa.schema import (
    RowError,
    Sample,
    load_samples,
    option_letters,
    read_rows,
    row_problems,
    sample_from_row,
    solution_text,
    write_parquet,
)

GOOD = {
    "problem_id": 3,
    "problem": "Which way?",
    "data_type": "video",
    "problem_type": "multiple choice",
    "options": ["A. left", "B. right"],
    "solution": "<answer>B</answer>",
    "path": "./v/x.mp4",
    "data_source": "LLaVA-Video-178K",
}


def test_good_row_and_extra_fields_survive():
    s = sample_from_row({**GOOD, "process": "think", "observation": "obs", "duration": 12.5})
    assert s.problem_id == "3" and s.answer == "B" and s.options == ["A. left", "B. right"]
    assert s.observation == "obs" and s.process == "think"
    assert s.extra == {"duration": 12.5}


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"problem_type": "essay"}, "unknown problem_type 'essay'"),
        ({"data_type": "audio"}, "unknown data_type"),
        ({"problem": None}, "missing field 'problem'"),
        ({"path": ""}, "missing field 'path'"),
        ({"solution": "<answer>E</answer>"}, "solution 'E' matches no option"),
        ({"options": []}, "multiple choice without options"),
        ({"options": ["left", "right"]}, "does not start with a letter"),
        ({"options": "A. left"}, "options is not a list"),
        ({"solution": "<answer> </answer>"}, "empty answer in solution"),
        (
            {"problem_type": "numerical", "options": [], "solution": "<answer>three</answer>"},
            "numerical solution 'three' is not a number",
        ),
        (
            {"problem_type": "regression", "options": [], "solution": "<answer>about 4</answer>"},
            "regression solution 'about 4' is not a number",
        ),
    ],
)
def test_row_problems(change, reason):
    problems = row_problems({**GOOD, **change})
    assert any(reason in p for p in problems), problems
    with pytest.raises(RowError, match=r"^row 3: "):
        sample_from_row({**GOOD, **change})


def test_numeric_solutions_that_are_numbers_pass():
    for solution in ("<answer>3</answer>", "<answer>1,200.5</answer>", "-2", 7):
        row = {**GOOD, "problem_type": "numerical", "options": [], "solution": solution}
        assert row_problems(row) == [], solution


def test_non_object_row():
    assert row_problems(["x"]) == ["row is a list, expected a JSON object"]


def test_solution_and_letters():
    assert solution_text("<answer> 3.5 </answer>") == "3.5"
    assert solution_text("plain") == "plain"
    assert option_letters(["A. x", "B) y", "C: z", "nope"]) == ["A", "B", "C", ""]


def test_json_jsonl_parquet_round_trip(tmp_path):
    rows = [
        GOOD,
        {
            **GOOD,
            "problem_id": 4,
            "problem_type": "numerical",
            "options": [],
            "solution": "<answer>2</answer>",
            "observation": "o",
            "process": "p",
            "meta": {"k": [1, 2]},
        },
    ]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    a = load_samples(tmp_path / "d.json")
    b = load_samples(tmp_path / "d.jsonl")
    assert a == b
    write_parquet(a, tmp_path / "d.parquet")
    c = load_samples(tmp_path / "d.parquet")
    assert c == a
    assert c[1].extra == {"meta": {"k": [1, 2]}}


def test_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset file not found"):
        read_rows(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(RowError, match="not valid JSON"):
        read_rows(tmp_path / "bad.json")
    (tmp_path / "obj.json").write_text("{}")
    with pytest.raises(RowError, match="expected a JSON list"):
        read_rows(tmp_path / "obj.json")
    (tmp_path / "bad.jsonl").write_text(json.dumps(GOOD) + "\n{oops\n")
    with pytest.raises(RowError, match=r"bad.jsonl:2: not valid JSON"):
        read_rows(tmp_path / "bad.jsonl")


def test_sample_is_plain_data():
    s = Sample("1", "q", "video", "OCR", "<answer>CAT</answer>", "x.mp4")
    assert s.to_row()["extra"] == {} and s.answer == "CAT"


def test_an_empty_dataset_is_reported(tmp_path):
    from videoqa.validate import validate_file

    (tmp_path / "empty.json").write_text("[]")
    n, problems = validate_file(tmp_path / "empty.json")
    assert n == 0 and [str(p) for p in problems] == [f"row -: {tmp_path / 'empty.json'} has no rows"]
