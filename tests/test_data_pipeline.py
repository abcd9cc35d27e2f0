"""The data pipeline and evaluation on the real stack (Ray, vLLM rollout workers, the reward pool, Redis, the
DeepSpeed learner): `make-cot`'s funnel with the oracle and the vLLM judge, SFT on its output, resuming; `eval` on
a Video-R1-format benchmark with videos and an image, resuming."""

import json
import shutil
import numpy as np
import pyarrow.parquet as pq
import pytest

from cluster.run_dir import RunExistsError
from rewards import eval_score
from tests.conftest import ROOT, config
from videoqa.schema import load_samples, read_rows

pytestmark = pytest.mark.vllm


N = 16  # training rows in make-cot's input


def cot_input(demo_data, path, n=N, outside=False):
    """``n`` training rows (media paths made absolute: data.media_roots must name ``demo_data``), two of them without
    the synthetic facts the oracle judge needs, one malformed row and one whose video is missing; ``outside``: and
    one whose video exists but climbs out of the input's folder (``../``)."""
    rows = read_rows(demo_data / "train.json")[:n]
    for r in rows:
        r["path"] = str((demo_data / r["path"]).resolve())
    for r in rows[:2]:
        r["problem_id"] += "-nofacts"
        r.pop("facts", None)
    rows.append({"problem_id": "bad", "problem": "?", "data_type": "video"})
    rows.append({**rows[3], "problem_id": "gone", "path": str(path.parent / "missing.mp4")})
    path.parent.mkdir(parents=True, exist_ok=True)
    if outside:
        shutil.copy(rows[3]["path"], path.parent.parent / "outside.mp4")
        rows.append({**rows[3], "problem_id": "outside", "path": "../outside.mp4"})
    path.write_text(json.dumps(rows))
    return path


def funnel(out):
    return dict(map(tuple, json.loads((out / "funnel.json").read_text())["funnel"]))


def test_make_cot_funnel_resumes_and_sft_trains_on_its_output(ray_cluster, sft_model, demo_data, tmp_path):
    from commands.make_cot import run_make_cot
    from commands.stages import run_sft

    src, out = cot_input(demo_data, tmp_path / "in" / "in.json", outside=True), tmp_path / "cot"

    def cfg():
        return config(
            tmp_path / "unused",
            sft_model,
            demo_data,
            f"data.media_roots=[{demo_data}]",
            f"cot.input={src}",
            f"cot.out_dir={out}",
            "cot.max_tokens=64",
            "cot.batch_rows=6",
            "cot.min_accuracy=0.0",
        )

    summary = run_make_cot(cfg())
    f = funnel(out)
    assert f["rows in"] == N + 3 and f["skipped: malformed"] == 1 and f["skipped: missing media"] == 1
    assert f["skipped: outside media"] == 1  # a row may not make the run read files outside its media roots
    assert f["passed template"] >= f["passed accuracy"] >= f["passed judge"] == f["kept"] == summary["kept"] > 0
    decided = pq.read_table(out / "funnel.parquet").to_pylist()
    by_id = {r["problem_id"]: r for r in decided}
    for r in decided:  # every drop carries the step that stopped it
        if r["reason"] == "template":
            assert not r["passed_template"]
        elif r["reason"] in ("kept", "judge_no", "judge_missing"):
            assert r["passed_accuracy"] and (r["verdict"] is True) == (r["reason"] == "kept")
    for pid in (k for k in by_id if k.endswith("-nofacts")):  # the oracle cannot judge these: no verdict, no keep
        assert by_id[pid]["reason"] in ("template", "judge_missing") and by_id[pid]["verdict"] is None
        assert by_id[pid]["final"] == (by_id[pid]["reason"] == "template")
    kept = load_samples(out / "cot.parquet")
    assert len(kept) == f["kept"] and all(s.observation and s.process for s in kept)
    assert all(s.extra["cot_verdict"] == "Yes" for s in kept)
    src_rows = {r["problem_id"]: r for r in read_rows(src) if "solution" in r}
    assert all(s.solution == src_rows[s.problem_id]["solution"] for s in kept)  # the dataset's truth, not the teacher's

    # resume: a batch's records lost (as if killed while writing it) are redone; finished rows are not
    parts = sorted((out / "parts" / "rows").glob("part_*.parquet"))
    lost = {r["row"] for r in pq.read_table(parts[0]).to_pylist()}
    parts[0].unlink()
    run_make_cot(cfg())
    new = set((out / "parts" / "rows").glob("part_*.parquet")) - set(parts)
    redone = {r["row"] for p in new for r in pq.read_table(p).to_pylist()}
    retried = {r["row"] for r in decided if not r["final"]} | {N + 1, N + 2}  # no verdict, media skipped: again
    assert lost <= redone and redone == lost | retried
    assert funnel(out) == f  # temperature 0 with seeded requests: the same outputs, the same decisions

    # SFT trains on what the funnel kept
    sft_out = tmp_path / "sft"
    s = run_sft(config(sft_out, sft_model, out, *summary["sft_overrides"], "sft.steps=3", "sft.batch_size=4"))
    assert s["steps"] == 3 and (sft_out / "hf" / "config.json").is_file() and not s["skipped_media"]

    with pytest.raises(RunExistsError, match="min_accuracy"):  # other settings never mix into these records
        run_make_cot(
            config(
                tmp_path / "unused",
                sft_model,
                demo_data,
                f"cot.input={src}",
                f"cot.out_dir={out}",
                "cot.max_tokens=64",
                "cot.batch_rows=6",
            )
        )


def test_make_cot_with_the_vllm_judge(ray_cluster, sft_model, tiny_model_dir, demo_data, tmp_path):
    """The judge is a real vLLM engine (the random tiny model): its text is no verdict, so nothing that reached
    the judge is kept and those rows stay open for a rerun."""
    from commands.make_cot import run_make_cot

    src, out = cot_input(demo_data, tmp_path / "in.json", n=4), tmp_path / "cot"
    summary = run_make_cot(
        config(
            tmp_path / "unused",
            sft_model,
            demo_data,
            f"data.media_roots=[{demo_data}]",
            f"cot.input={src}",
            f"cot.out_dir={out}",
            "cot.max_tokens=64",
            "cot.min_accuracy=0.0",
            "judge.backend=vllm",
            f"judge.model={tiny_model_dir}",
            "judge.max_tokens=8",
            "judge.engine.num_cpus=1",
        )
    )
    f = funnel(out)
    assert f["rows in"] == 6 and f["passed accuracy"] > 0  # some rows reached the judge
    assert f["kept"] + f["dropped: judge_no"] + f["dropped: judge_missing"] == f["passed accuracy"]
    decided = pq.read_table(out / "funnel.parquet").to_pylist()
    judged = [r for r in decided if r["passed_accuracy"]]
    assert all((r["verdict"] is None) == (r["reason"] == "judge_missing") for r in judged)
    assert summary["judge"].startswith("vllm:")
    js = summary["judge_stats"]  # the engine was asked, and each candidate that reached step 3 has an outcome
    outcomes = sum(v for k, v in js.items() if k not in ("judge_calls", "judge_not_needed"))
    assert js["judge_calls"] >= 1 and outcomes == f["passed accuracy"], js


def benchmark_file(synthetic_dir, folder):
    """A Video-R1-format benchmark: media paths relative to the file, four videos, one image, one malformed row,
    one missing video."""
    from PIL import Image

    (folder / "videos").symlink_to(synthetic_dir / "videos")
    (folder / "images").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (84, 84, 3), dtype=np.uint8)).save(folder / "images" / "dots.png")
    rows = [r for r in read_rows(synthetic_dir / "eval.json") if r["data_type"] == "video"][:4]
    rows.append(
        {
            "problem_id": "img-1",
            "problem": "How many dots are in the image?",
            "data_type": "image",
            "problem_type": "numerical",
            "solution": "<answer>3</answer>",
            "path": "./images/dots.png",
        }
    )
    rows.append(
        {
            "problem_id": "broken",
            "problem": "?",
            "data_type": "video",
            "problem_type": "numerical",
            "path": "./videos/x.mp4",
        }
    )  # no solution
    rows.append({**rows[0], "problem_id": "gone", "path": "./videos/missing.mp4"})
    path = folder / "eval_mini.json"
    path.write_text(json.dumps(rows))
    return path


def test_eval_on_a_video_r1_benchmark(ray_cluster, tiny_model_dir, synthetic_dir, tmp_path):
    from commands.eval import run_eval
    from cluster.config import Config
    from cluster.config_loader import load_config

    bench, out = benchmark_file(synthetic_dir, tmp_path), tmp_path / "eval"
    args = [
        f"model.path={tiny_model_dir}",
        f"eval.benchmarks={json.dumps([str(bench)])}",
        f"eval.out_dir={out}",
        "eval.max_tokens=24",
        "eval.nframes=4",
        "eval.max_pixels=3136",
        "eval.batch_rows=3",
        "rollout.num_cpus=1",
        "data.loader_workers=1",
    ]
    cfg = lambda *extra: load_config(Config, ROOT / "configs" / "demo.yaml", args + list(extra))  # noqa: E731
    summary = run_eval(cfg())
    b = summary["benchmarks"]["eval_mini"]
    assert b["rows"] == 7 and b["scored"] == 5 and b["skipped"] == {"malformed": 1, "missing": 1}
    rows = pq.read_table(out / "eval_mini.parquet").to_pylist()
    assert {r["data_type"] for r in rows} == {"video", "image"} and len(rows) == 5
    truth = {r["problem_id"]: r for r in read_rows(bench)}
    for r in rows:  # each stored score is Video-R1's rule applied to the stored output
        t = truth[r["problem_id"]]
        assert r["score"] == eval_score(r["output"], t["solution"], t["problem_type"])
    assert b["accuracy"] == pytest.approx(np.mean([r["score"] for r in rows]))
    assert "| eval_mini | 7 | 5 |" in (out / "results.md").read_text()

    # resume: the rows of a lost part are generated again (seeded: the same outputs); the others are read back
    parts = sorted((out / "parts" / "eval_mini").glob("part_*.parquet"))
    lost = {r["row"] for r in pq.read_table(parts[-1]).to_pylist()}
    parts[-1].unlink()
    again = run_eval(cfg())
    now = sorted((out / "parts" / "eval_mini").glob("part_*.parquet"))
    assert len(now) == len(parts) and {r["row"] for r in pq.read_table(now[-1]).to_pylist()} == lost
    assert pq.read_table(out / "eval_mini.parquet").to_pylist() == rows
    assert again["benchmarks"]["eval_mini"]["accuracy"] == b["accuracy"]
    with pytest.raises(RunExistsError, match="prompt"):  # other settings never mix into these records
        run_eval(cfg("eval.prompt=video-r1"))
    assert run_eval(cfg("eval.prompt=video-r1"), force=True)["benchmarks"]["eval_mini"]["scored"] == 5
