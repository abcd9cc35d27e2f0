"""The benchmarks that run the real stack (rollout, learner, train, eval, faults), each run to its table at its
smallest sizes, as a user runs it (`python -m benchmarks`, a subprocess with a private Ray cluster): a change
underneath that breaks one (a return type, a renamed field) fails here, not in a user's `make bench`. They share
one --root, so the tiny model, the data and the SFT model are made once.

Each also checks that the console is quiet: the table, not vLLM's, Ray's or DeepSpeed's INFO lines and bars.
Catches a benchmark that skips `_quiet` (hundreds of INFO lines) or a quiet set-up applied after vLLM loads."""

import re

import pytest

from tests.test_benchmarks import run

# Not counted: vLLM's "Triton is installed, but doesn't include CPU backend" warning, which vLLM 0.32 logs while
# importing, before its logging is configured (so no level reaches it), once per engine process.
NOISE = re.compile(r"\bINFO\b|Loading safetensors|Loading weights|NUMA binding")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("bench")


def ran(*args, timeout=900):
    r = run(*args, timeout=timeout)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    noise = [line for line in (r.stdout + r.stderr).splitlines() if NOISE.search(line)]
    assert not noise, noise[:5]  # the quiet console: catches a benchmark that skips its quiet set-up
    return r.stdout


def rows_of(out: str, labels) -> dict[str, str]:
    found = {
        label: next((line for line in out.splitlines() if line.strip().startswith(label)), None) for label in labels
    }
    assert all(found.values()), (found, out)
    return found


def test_rollout(root):
    """Catches: the sync's report taken for a number (the TypeError this benchmark once shipped with), the group's
    token count differing from raw vLLM's on the same seeds (the benchmark asserts it), a ratio column lost."""
    out = ran("rollout", "--root", root, "--prompts", 2, "--max-tokens", 8, "--rounds", 1, "--tiny-only")
    rows = rows_of(out, ("raw vllm.LLM.generate", "worker group (1 Ray worker)", "weight sync, tiny model"))
    assert "of raw" in rows["worker group (1 Ray worker)"] and "x raw gloo" in rows["weight sync, tiny model"]
    assert float(re.search(r"([\d.]+)x raw gloo", rows["weight sync, tiny model"]).group(1)) > 0


@pytest.mark.alone  # a 3B-width slice (float32, full vocabulary): not beside other tests' engines
def test_learner(root):
    """Catches a change in the learner's step or log-prob API that the benchmark calls, the vision-features rows
    lost or their ratio not a number (on the tiny model and a 3B-width slice of 1 vision block, G=2), a token
    budget that does not lower the padding of a batch whose responses vary 1-8x, and a LoRA sync that carries as
    much as full fine-tuning's (or an adapter larger than the merged layers)."""
    out = ran("learner", "--root", root, "--rounds", 1, "--wide-blocks", 1, "--wide-frames", 2, "--wide-group", 2)
    rows_of(out, ("PA-GRPO step", "GRPO step", "PA-GRPO / GRPO", "log-prob throughput"))
    rows = rows_of(out, ("tiny model, once / every", "3B width, 1 vision blocks, 2 frames 112x112, once / every"))
    assert all(float(line.split()[-5]) > 0 for line in rows.values()), rows
    cut = rows_of(out, ("by rows (micro_batch_size=4)", "by tokens (micro_batch_tokens=", "tokens / rows step time"))
    padding = {k: float(cut[k].split()[-1]) for k in ("by rows (micro_batch_size=4)", "by tokens (micro_batch_tokens=")}
    assert padding["by tokens (micro_batch_tokens="] < padding["by rows (micro_batch_size=4)"], cut
    sync = rows_of(
        out,
        (
            "full fine-tuning: the trainable weights",
            "LoRA: the adapted layers, merged",
            "LoRA: the adapters alone",
            "RL step, full fine-tuning / LoRA",
        ),
    )
    mib = {k: float(v.split("MiB")[0].split()[-1]) for k, v in sync.items() if "MiB" in v}
    assert (
        mib["LoRA: the adapters alone"]
        < mib["LoRA: the adapted layers, merged"]
        < mib["full fine-tuning: the trainable weights"]
    ), sync


def test_train(root):
    """The RL step split for the three runs, after a 2-step SFT. Catches: a metrics key the table reads renamed
    (KeyError), a run that did not write its steps, the ratio lines gone."""
    out = ran("train", "--root", root, "--steps", 1, "--prompts", 2, "--sft-steps", 2)
    rows = rows_of(
        out,
        (
            "pa_grpo, synchronous",
            "pa_grpo, overlapped",
            "grpo, synchronous",
            "overlapped / synchronous step time",
            "PA-GRPO / GRPO step time",
        ),
    )
    for run_name in ("pa_grpo, synchronous", "pa_grpo, overlapped", "grpo, synchronous"):
        step = float(rows[run_name].split()[2])
        assert step > 0, rows[run_name]
    assert "after 2 SFT steps" in out


def test_eval(root):
    """Evaluation through 1 and 2 workers, then make-cot. Catches an evaluation or make-cot API change and a
    funnel that is not printed."""
    out = ran("eval", "--root", root, "--rows", 4, "--max-tokens", 8)
    rows = rows_of(
        out,
        (
            "eval, 1 rollout worker",
            "eval, 2 rollout workers",
            "eval 2 vs 1 workers",
            "eval 2 vs 1 workers, same CPUs",
            "eval, 2 rollout workers, 2 chunks per worker",
            "make-cot end to end",
            "make-cot funnel",
        ),
    )
    assert float(rows["eval 2 vs 1 workers"].split()[-1].rstrip("x")) > 0


def test_faults(root):
    """One injected fault per step of a short RL run. Catches: a fault that loses or duplicates rollouts, a step
    that never completes, a fault that is survived but not counted (its row's counted column reads '-'). Only the
    faults that are counted whatever the model writes are checked for a count: after 2 SFT steps few responses
    have an observation to judge, so the cache and judge faults may have nothing to count."""
    out = ran("faults", "--root", root, "--sft-steps", 2, "--chunk-timeout", 10, timeout=1200)
    assert "steps completed 9/9; rollouts lost 0, duplicated 0" in out, out[-2000:]
    table = {int(line.split()[0]): line for line in out.splitlines() if re.match(r"\s*\d+\s{2}", line)}
    assert "worker lost 1" in table[2] and "worker hung 1" in table[7], out[-2000:]
    assert "skipped optimizer steps 1" in table[8], table[8]
