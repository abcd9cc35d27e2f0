"""The demo's console report from a summary with every optional part: the trained-type gain and the controls,
including the PA-GRPO - GRPO comparison (a summary from a real run, trimmed)."""

from commands.demo_report import print_report

GAIN = {"gain": 0.018, "se": 0.026, "z": 0.7}


def test_the_report_prints_the_trained_type_gain_and_the_controls(capsys):
    """Catches the report treating pa_grpo_minus_grpo (paired gains) as a control run: it crashed formatting a dict
    as a number after the demo had written its summary."""
    summary = {
        "held_out_questions": 400,
        "accuracy": {"untrained": 0.0, "sft": 0.378, "pa_grpo": 0.459},
        "accuracy_se": {"untrained": 0.0, "sft": 0.024, "pa_grpo": 0.025},
        "yes_rate": {"untrained": 0.0, "sft": 0.365, "pa_grpo": 0.455},
        "gain_sft": {"gain": 0.378, "se": 0.024, "z": 15.9},
        "gain_rl": {"gain": 0.080, "se": 0.019, "z": 4.3},
        "trained_types": ["multiple choice"],
        "trained_questions": 222,
        "gain_rl_trained": {"gain": 0.162, "se": 0.033, "z": 5.0},
        "controls": {
            "grpo": {"accuracy": 0.452, "yes_rate": 0.445},
            "pa_grpo_minus_grpo": {"accuracy": GAIN, "accuracy_trained": GAIN, "yes_rate": GAIN},
            "sft_more": {"accuracy": 0.526, "yes_rate": 0.52},
        },
        "seconds": 322.0,
    }
    print_report(summary)
    out = capsys.readouterr().out
    assert "RL - SFT on the trained types (multiple choice; 222 questions) +0.162 +/- 0.033" in out
    assert "PA-GRPO - GRPO, accuracy trained +0.018 +/- 0.026" in out
    assert "control grpo: accuracy 0.452" in out and "control sft_more: accuracy 0.526" in out
    assert "control pa_grpo_minus_grpo" not in out
