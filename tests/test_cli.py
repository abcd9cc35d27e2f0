"""The `videop2r` console script, run as a user runs it (a subprocess of the installed entry point)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

VIDEOP2R = str(Path(sys.executable).parent / "videop2r")


def run(*args, cwd=ROOT, timeout=600):
    return subprocess.run([VIDEOP2R, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_help_lists_commands():
    r = run("--help")
    assert r.returncode == 0
    for cmd in (
        "demo",
        "sft",
        "train",
        "eval",
        "make-cot",
        "report",
        "make-synthetic",
        "make-tiny-model",
        "validate-data",
        "convert-data",
    ):
        assert cmd in r.stdout
    assert "bench-" not in r.stdout  # benchmarks are `python -m benchmarks` (tests/test_benchmarks.py)
    r = run("demo", "--help")
    assert r.returncode == 0 and "key.sub=value" in r.stdout


def test_eval_and_make_cot_refuse_bad_input_in_one_line(tmp_path, tiny_model_dir, synthetic_dir):
    r = run("eval", "--model", tiny_model_dir, "--out", tmp_path / "e")
    assert (
        r.returncode == 2
        and r.stderr.strip() == "error: no benchmark files: pass --bench FILE (or eval.benchmarks=[...])"
    )
    r = run("eval", "--model", tiny_model_dir, "--bench", tmp_path / "nope.json", "--out", tmp_path / "e")
    assert r.returncode == 2 and "benchmark file not found" in r.stderr and "nope.json" in r.stderr
    r = run("make-cot", "--input", tmp_path / "nope.json", "--teacher", tiny_model_dir, "--out", tmp_path / "c")
    assert r.returncode == 2 and "is not a file" in r.stderr and r.stderr.strip().count("\n") == 0
    r = run("make-cot", "--input", tmp_path / "nope.json", "cot.samples=4")  # 4 identical greedy samples
    assert r.returncode == 2 and "cot.temperature > 0" in r.stderr
    assert not (tmp_path / "e").exists() and not (tmp_path / "c").exists()
    rows = json.loads((synthetic_dir / "eval.json").read_text())
    for row in rows:
        row.pop("facts", None)
    (tmp_path / "real.json").write_text(json.dumps(rows))  # rows like a real dataset's: no synthetic facts
    r = run("make-cot", "--input", tmp_path / "real.json", "--teacher", tiny_model_dir, "--out", tmp_path / "c")
    assert r.returncode == 2 and "judge.backend=oracle needs the synthetic task's facts" in r.stderr
    r = run(
        "train",
        f"model.path={tiny_model_dir}",
        f"data.dir={tmp_path}",
        "data.train_file=real.json",
        f"run.out_dir={tmp_path / 'r'}",
    )  # the same for RL: refused before the run folder exists
    assert r.returncode == 2 and "judge.backend=oracle needs" in r.stderr and not (tmp_path / "r").exists()
    r = run("train", f"model.path={tiny_model_dir}", "rollout.tensor_parallel_size=2", f"run.out_dir={tmp_path / 'r'}")
    assert r.returncode == 2 and "needs transport.scheme=group" in r.stderr and r.stderr.strip().count("\n") == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    r = run("eval", "--model", tiny_model_dir, "--bench", synthetic_dir / "eval.json", "--out", mine)
    assert r.returncode == 2 and "not this command's output" in r.stderr
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_config_typo_is_one_line_error():
    r = run("show-config", "--config", "configs/demo.yaml", "rollout.group_sise=4")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "unknown config key 'rollout.group_sise' (did you mean 'rollout.group_size'?)" in r.stderr
    ok = run("show-config", "--config", "configs/demo.yaml", "rollout.group_size=5")
    assert ok.returncode == 0 and "group_size: 5" in ok.stdout


def test_validate_data_reports_every_bad_row(tmp_path, synthetic_dir):
    d = tmp_path / "data"
    shutil.copytree(synthetic_dir, d)
    rows = json.loads((d / "train.json").read_text())
    (d / rows[0]["path"]).unlink()
    (d / rows[1]["path"]).write_bytes(b"\x00" * 300)
    rows[2]["problem_type"] = "essay"
    del rows[3]["problem"]
    mc = next(i for i, r in enumerate(rows) if r["problem_type"] == "multiple choice" and i > 3)
    rows[mc]["solution"] = "<answer>F</answer>"
    (d / "train.json").write_text(json.dumps(rows))
    r = run("validate-data", d / "train.json")
    assert r.returncode == 1
    lines = r.stdout.strip().splitlines()
    expect = {
        rows[0]["problem_id"]: "not found",
        rows[1]["problem_id"]: "corrupt video",
        rows[2]["problem_id"]: "unknown problem_type 'essay'",
        rows[3]["problem_id"]: "missing field 'problem'",
        rows[mc]["problem_id"]: "solution 'F' matches no option",
    }
    assert len(lines) == len(expect), lines
    for rid, reason in expect.items():
        assert any(line.startswith(f"row {rid}: ") and reason in line for line in lines), (rid, lines)
    assert f"{len(rows)} rows, 5 bad" in r.stderr
    assert run("validate-data", synthetic_dir / "eval.json").returncode == 0


def test_unreadable_data_files_are_one_line_errors(tmp_path, synthetic_dir):
    (tmp_path / "binary.json").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "folder.json").mkdir()
    (tmp_path / "fake.parquet").write_text("not parquet")
    expect = {"binary.json": "not a text file", "folder.json": "is a folder", "fake.parquet": "not a readable Parquet"}
    for name, reason in expect.items():
        for cmd in (
            ("validate-data", tmp_path / name),
            ("convert-data", tmp_path / name, "--out", tmp_path / "o.parquet"),
        ):
            r = run(*cmd)
            assert r.returncode == 2 and reason in r.stderr and r.stderr.strip().count("\n") == 0, (cmd, r.stderr)
    # an upper-case suffix is still Parquet
    assert run("convert-data", synthetic_dir / "eval.json", "--out", tmp_path / "EVAL.PARQUET").returncode == 0
    r = run("validate-data", "--no-media", tmp_path / "EVAL.PARQUET")
    assert r.returncode == 0 and "0 bad" in r.stderr, r.stderr
    r = run("make-synthetic", "--out", tmp_path / "s", "--frames", 1)
    assert r.returncode == 2 and "--frames: 1 is below the minimum 2" in r.stderr and not (tmp_path / "s").exists()


def test_make_synthetic_and_convert(tmp_path):
    r = run("make-synthetic", "--out", tmp_path / "s", "--n", 5, "--seed", 1, "--quiet")
    assert r.returncode == 0, r.stderr
    assert len(json.loads((tmp_path / "s" / "train.json").read_text())) == 5
    r = run("convert-data", tmp_path / "s" / "cot.json", "--out", tmp_path / "cot.parquet")
    assert r.returncode == 0 and "5 rows" in r.stdout
    from videoqa.schema import load_samples

    assert load_samples(tmp_path / "cot.parquet") == load_samples(tmp_path / "s" / "cot.json")
    bad = run("convert-data", tmp_path / "missing.json")
    assert bad.returncode == 2 and "dataset file not found" in bad.stderr
    # nothing the user owns is overwritten without --force, and the input never
    before = (tmp_path / "cot.parquet").read_bytes()
    again = run("convert-data", tmp_path / "s" / "cot.json", "--out", tmp_path / "cot.parquet")
    assert again.returncode == 2 and "--force" in again.stderr and (tmp_path / "cot.parquet").read_bytes() == before
    assert (
        run("convert-data", tmp_path / "s" / "cot.json", "--out", tmp_path / "cot.parquet", "--force").returncode == 0
    )
    src = (tmp_path / "s" / "cot.json").read_bytes()
    same = run("convert-data", tmp_path / "s" / "cot.json", "--out", tmp_path / "s" / "cot.json", "--force")
    assert (
        same.returncode == 2
        and "is the input file" in same.stderr
        and (tmp_path / "s" / "cot.json").read_bytes() == src
    )
    train = (tmp_path / "s" / "train.json").read_text()
    over = run("make-synthetic", "--out", tmp_path / "s", "--n", 7, "--seed", 2, "--quiet")
    assert over.returncode == 2 and "not empty" in over.stderr and (tmp_path / "s" / "train.json").read_text() == train
    assert run("make-synthetic", "--out", tmp_path / "cot.parquet", "--n", 5, "--quiet").returncode == 2  # a file


def test_make_synthetic_style_and_mix(tmp_path):
    r = run(
        "make-synthetic",
        "--out",
        tmp_path / "d",
        "--n",
        8,
        "--n-eval",
        5,
        "--style",
        "demo",
        "--mix",
        "multiple choice=3, OCR=1",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert m["style"] == "demo" and m["mix"] == {"multiple choice": 3.0, "OCR": 1.0}
    types = [row["problem_type"] for row in json.loads((tmp_path / "d" / "train.json").read_text())]
    assert sorted(types) == ["OCR"] * 2 + ["multiple choice"] * 6
    for mix in ("multiple choice=x", "counting=1", "OCR"):
        bad = run("make-synthetic", "--out", tmp_path / "bad", "--n", 5, "--mix", mix, "--quiet")
        assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0, bad.stderr
        assert "bad mix entry" in bad.stderr and "TYPE=WEIGHT" in bad.stderr
    assert not (tmp_path / "bad").exists()  # refused before writing anything


def test_make_tiny_model_size_from_overrides(tmp_path):
    r = run("make-tiny-model", "--out", tmp_path / "m", "tiny_model.num_layers=1", "tiny_model.vocab_size=600")
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["text_config"]["num_hidden_layers"] == 1
    bad = run("make-tiny-model", "--out", tmp_path / "m2", "tiny_model.num_heads=3")
    assert bad.returncode == 2 and "divisible" in bad.stderr
    weights = sorted(p.name for p in (tmp_path / "m").iterdir())
    over = run("make-tiny-model", "--out", tmp_path / "m")
    assert over.returncode == 2 and "not empty" in over.stderr
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == weights
    q3 = run("make-tiny-model", "--out", tmp_path / "q3", "--family", "qwen3_vl", "tiny_model.num_layers=1")
    assert q3.returncode == 0 and "tiny Qwen3-VL written" in q3.stdout, q3.stderr
    cfg = json.loads((tmp_path / "q3" / "config.json").read_text())
    assert (cfg["model_type"], cfg["vision_config"]["patch_size"], cfg["text_config"]["num_hidden_layers"]) == (
        "qwen3_vl",
        16,
        1,
    )


@pytest.mark.vllm
def test_demo_end_to_end(tmp_path):
    """The main job as a user starts it, on tiny budgets: builds model and data inside its folder, evaluates,
    SFT, evaluates, PA-GRPO, evaluates; writes summary.json and the PNG; a rerun finds it complete."""
    out = tmp_path / "run"
    small = [
        f"run.out_dir={out}",
        f"model.path={out}/model",
        f"data.dir={out}/data",
        "data.synthetic_n=20",
        "demo.eval_rows=10",
        "eval.max_rows=10",
        "sft.steps=20",
        "trainer.steps=2",
        "trainer.prompts_per_step=2",
        "demo.val_rows=6",
        "demo.sft_check_every=10",
        "rollout.group_size=2",
        "rollout.max_tokens=16",
        "eval.max_tokens=16",
        "rollout.num_cpus=1",
        "learner.num_cpus=1",
    ]
    r = run("demo", "--config", "configs/demo.yaml", *small, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["accuracy"]) == {"untrained", "sft", "pa_grpo"} and summary["held_out_questions"] == 10
    assert set(summary["accuracy_by_type"]["sft"]) == {"multiple choice", "numerical", "OCR", "free-form", "regression"}
    assert summary["rl_steps"] == 2 and (out / "reward_curves.png").stat().st_size > 10_000
    # the held-out rows follow demo.eval_mix (5:1:1:1:1 of 10: 6 direction questions), and RL's gain is also
    # measured on the trained type's rows alone. Catches a trained-type mask that counts every row.
    assert summary["trained_types"] == ["multiple choice"] and summary["trained_questions"] == 6
    assert set(summary["gain_rl_trained"]) == {"gain", "se", "z"} and "on the trained types" in r.stdout
    assert (out / "report.png").stat().st_size > 20_000  # videop2r report's panels, written by the demo too
    # the GRPO control ran by default from the same SFT checkpoint, compared row by row with PA-GRPO. Catches a
    # demo that skips it, or compares it on other rows or from another start.
    grpo = summary["controls"]["grpo"]
    assert len((out / "grpo" / "metrics.jsonl").read_text().splitlines()) == 2
    assert set(summary["controls"]["pa_grpo_minus_grpo"]) == {"accuracy", "accuracy_trained", "yes_rate"}
    assert (
        set(grpo["gain_over_sft"]) == {"gain", "se", "z"} and "mismatch_rate" in grpo and "grpo (control)" in r.stdout
    )
    assert "PA-GRPO - GRPO, accuracy trained" in r.stdout and "sft_more" not in summary["controls"]
    # SFT's stop check ran on the validation rows through a rollout worker holding the SFT learner's weights
    assert [c["step"] for c in summary["sft_validation_checks"]] == [10, 20]
    assert (out / "pa_grpo" / "metrics.jsonl").is_file() and (out / "sft" / "hf" / "config.json").is_file()
    assert "held-out reasoning accuracy" in r.stdout and "Loading weights" not in r.stdout + r.stderr
    again = run("demo", "--config", "configs/demo.yaml", *small)
    assert again.returncode == 0 and "the demo is complete" in again.stdout
    # other settings on the finished demo: refused, naming them, before anything starts; its results untouched.
    # Catches a demo that prints the old run's results as if they answered the new settings.
    before = (out / "summary.json").read_text()
    changed = run("demo", "--config", "configs/demo.yaml", *small, "rollout.max_tokens=20", "learner.lr=0.5")
    assert changed.returncode == 2 and "held-out" not in changed.stdout, changed.stdout + changed.stderr
    assert "other settings (learner.lr, rollout.max_tokens)" in changed.stderr and "--force" in changed.stderr
    assert len(changed.stderr.strip().splitlines()) == 1 and (out / "summary.json").read_text() == before
    # a user's own folder: refused, the file untouched, nothing written there. Catches a demo training into it.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    into = run(
        "demo",
        "--config",
        "configs/demo.yaml",
        f"run.out_dir={mine}",
        f"model.path={mine}/model",
        f"data.dir={mine}/data",
    )
    assert into.returncode == 2 and "not a demo's" in into.stderr and "--force" in into.stderr, into.stderr
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "my notes"
    # a model path outside the demo's folder is never generated into
    elsewhere = tmp_path / "my-model"
    bad = run(
        "demo", "--config", "configs/demo.yaml", *small[:1], f"run.out_dir={tmp_path}/other", f"model.path={elsewhere}"
    )
    assert bad.returncode == 2 and "has no model" in bad.stderr and not elsewhere.exists()


def test_report_overlays_runs_and_refuses_bad_input(tmp_path):
    from commands.report import write_report

    for name, algorithm, rate in (("pa", "pa_grpo", 0.1), ("g", "grpo", 0.05)):
        run_dir = tmp_path / name
        run_dir.mkdir()
        (run_dir / "config.yaml").write_text(f"learner:\n  algorithm: {algorithm}\n")
        rows = [
            {
                "step": s,
                "reward_perception": 1 + rate * s,
                "reward_reasoning": 2 - rate * s,
                "accuracy/OCR": rate * s,
                "accuracy/numerical": 0.5,
                "judge_yes_rate": 0.4,
                "kl": 0.01 * s,
                "mismatch_kl": 1e-9 * s,
                "entropy": 2.0 - rate,
                "time/step": 3.0,
            }
            for s in (1, 2, 3)
        ]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "r.png"
    r = run("report", tmp_path / "pa", tmp_path / "g", "--out", out)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    plotted = write_report([tmp_path / "pa", tmp_path / "g"], tmp_path / "again.png")
    assert plotted["perception reward R_P"]["pa (pa_grpo)"] == ([1, 2, 3], [1.1, 1.2, 1.3])
    assert plotted["reasoning reward R_R"]["g (grpo)"][1] == [1.95, 1.9, 1.85]
    assert set(plotted["accuracy by problem type"]) == {
        "pa (pa_grpo): OCR",
        "pa (pa_grpo): numerical",
        "g (grpo): OCR",
        "g (grpo): numerical",
    }
    assert plotted["mismatch KL (vLLM vs learner)"]["g (grpo)"][1] == pytest.approx([1e-9, 2e-9, 3e-9], rel=1e-9)
    assert plotted["entropy of the sampled tokens"]["pa (pa_grpo)"][1] == [1.9, 1.9, 1.9]
    # the demo's report: the stages' held-out accuracy as a bar panel beside the curves (catches it left out)
    stages = {"sft": (0.378, 0.024), "pa_grpo": (0.459, 0.025), "grpo": (0.452, 0.025)}
    with_bars = write_report([tmp_path / "pa", tmp_path / "g"], tmp_path / "bars.png", held_out=stages)
    assert with_bars["held-out accuracy by stage"] == stages and "held-out accuracy by stage" not in plotted
    assert (tmp_path / "bars.png").stat().st_size > (tmp_path / "again.png").stat().st_size
    # smoothed: TensorBoard's debiased moving average (a constant stays constant; a ramp lags behind)
    smooth = write_report([tmp_path / "pa"], tmp_path / "smooth.png", smooth=0.5)
    assert smooth["entropy of the sampled tokens"]["pa (pa_grpo)"][1] == pytest.approx([1.9, 1.9, 1.9])
    assert smooth["perception reward R_P"]["pa (pa_grpo)"][1] == pytest.approx([1.1, 0.875 / 0.75, 1.0875 / 0.875])
    assert run("report", tmp_path / "pa", "--out", tmp_path / "s.png", "--smooth", "1").returncode == 2
    before = out.read_bytes()
    again = run("report", tmp_path / "pa", "--out", out)
    assert again.returncode == 2 and "--force" in again.stderr and out.read_bytes() == before
    assert run("report", tmp_path / "pa", "--out", out, "--force").returncode == 0
    missing = run("report", tmp_path / "nope", "--out", tmp_path / "x.png")
    assert missing.returncode == 2 and "has no metrics.jsonl" in missing.stderr and missing.stderr.count("\n") == 1
    assert run("report", tmp_path / "pa", "--out", tmp_path / "x.jpg").returncode == 2
