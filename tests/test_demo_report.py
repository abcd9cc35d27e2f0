"""The demo's console report and figure from a summary with every optional part: the trained-type gain and the
controls, including the PA-GRPO - GRPO comparison (a summary from a real run, trimmed); which controls a finished
demo still lacks."""

import json

from cluster.config import Config
from cluster.config_loader import load_config
from commands.demo import controls_missing
from commands.demo_report import print_report
from commands.demo_summary import stage_accuracy

GAIN = {"gain": 0.018, "se": 0.026, "z": 0.7}


def test_the_report_prints_the_trained_type_gain_and_the_controls(capsys):
    """Catches the report treating pa_grpo_minus_grpo (paired gains) as a control run: it crashed formatting a dict
    as a number after the demo had written its summary."""
    summary = {
        "held_out_questions": 400,
        "accuracy": {"untrained": 0.0, "sft": 0.378, "pa_grpo": 0.459},
        "accuracy_se": {"untrained": 0.0, "sft": 0.024, "pa_grpo": 0.025},
        "yes_rate": {"untrained": 0.0, "sft": 0.365, "pa_grpo": 0.455},
        "mismatch_rate": {"untrained": float("nan"), "sft": 0.031, "pa_grpo": 0.012},
        "gain_sft": {"gain": 0.378, "se": 0.024, "z": 15.9},
        "gain_rl": {"gain": 0.080, "se": 0.019, "z": 4.3},
        "trained_types": ["multiple choice"],
        "trained_questions": 222,
        "gain_rl_trained": {"gain": 0.162, "se": 0.033, "z": 5.0},
        "controls": {
            "grpo": {"accuracy": 0.452, "accuracy_se": 0.025, "yes_rate": 0.445, "mismatch_rate": 0.02},
            "pa_grpo_minus_grpo": {"accuracy": GAIN, "accuracy_trained": GAIN, "yes_rate": GAIN},
            "sft_more": {"accuracy": 0.526, "yes_rate": 0.52},
        },
        "seconds": 322.0,
    }
    print_report(summary)
    out = capsys.readouterr().out
    assert "pa_grpo          accuracy 0.459 +/- 0.025   Yes-rate 0.455   mismatch 0.012" in out
    assert "untrained        accuracy 0.000 +/- 0.000   Yes-rate 0.000\n" in out  # no row told: no "nan"
    assert "RL - SFT on the trained types (multiple choice; 222 questions) +0.162 +/- 0.033" in out
    assert "PA-GRPO - GRPO, accuracy trained +0.018 +/- 0.026" in out
    assert "grpo (control)   accuracy 0.452 +/- 0.025   Yes-rate 0.445   mismatch 0.020" in out
    assert "sft_more (control) accuracy 0.526   Yes-rate 0.520" in out and "pa_grpo_minus_grpo" not in out
    # the report's bar panel: every stage, then each control run with its own standard error
    assert stage_accuracy(summary) == {
        "untrained": (0.0, 0.0),
        "sft": (0.378, 0.024),
        "pa_grpo": (0.459, 0.025),
        "grpo": (0.452, 0.025),
        "sft_more": (0.526, 0.0),
    }


def test_a_finished_demo_runs_only_the_controls_it_lacks(tmp_path):
    """Catches a finished demo rerun from scratch for a control it already has, or reported as complete while a
    control the settings ask for (GRPO by default) is missing."""
    cfg = load_config(Config, "configs/demo.yaml", [])
    assert cfg.demo.grpo_control and not cfg.demo.controls  # GRPO by default; more SFT when asked
    assert controls_missing(cfg, None) == ["grpo"]
    assert controls_missing(cfg, {"accuracy": {}}) == ["grpo"]  # a demo from before GRPO ran by default
    assert controls_missing(cfg, {"controls": {"grpo": {}, "pa_grpo_minus_grpo": {}}}) == []
    both = load_config(Config, "configs/demo.yaml", ["demo.controls=true"])
    assert controls_missing(both, {"controls": {"grpo": {}}}) == ["sft_more"]
    assert controls_missing(load_config(Config, "configs/demo.yaml", ["demo.grpo_control=false"]), None) == []
    json.dumps(stage_accuracy({"accuracy": {"sft": 0.5}, "accuracy_se": {"sft": 0.1}}))
