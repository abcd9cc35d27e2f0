"""LoRA (``learner.lora``): adapters on the language model only, the KL reference as the model with its adapters
off, the adapted layers' merged weights as what a sync sends (vLLM then equals the learner), hf/ (merged) and
adapter/ (peft) in checkpoints, and a bit-exact resume."""

import pytest
import torch

from cluster.config import Config
from cluster.config_loader import ConfigError, load_config
from learner.engine import Learner, Rollout
from learner.lora import adapted_layers, lora_parameters
from videoqa.loader import MediaLoader
from videoqa.schema import load_samples
from tests.conftest import ROOT

LORA = ["learner.lora.rank=8", "learner.lora.alpha=16", "learner.lr=1e-2", "learner.micro_batch_size=4"]
ADAPTED_PER_LAYER = 7  # q, k, v, o, gate, up, down


def lora_cfg(*overrides):
    torch.manual_seed(0)  # the adapters' random A: the same whatever ran before (tests never depend on their order)
    return load_config(Config, ROOT / "configs" / "demo.yaml", [*LORA, *overrides])


@pytest.fixture(scope="module")
def items(synthetic_dir, test_config):
    samples = load_samples(synthetic_dir / "cot.json")[:4]
    return list(MediaLoader(synthetic_dir, test_config.video.sampling())(samples))


def targets(learner, items):
    from learner.engine import sft_targets

    return sft_targets(learner.processor.tokenizer, items)


def rollouts(items, tgt):
    return [
        Rollout(items[g], tgt[g][: 6 + 4 * j], r_perception=float(j), r_reasoning=float(j % 2))
        for g in range(2)
        for j in range(3)
    ]


def base_logprobs(model_dir, items, responses):
    """log-probs of ``responses`` under the plain transformers model of ``model_dir``, through the learner's own
    scoring path (no DeepSpeed, no peft)."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from learner.batch import build_inputs, response_logprobs

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    batch = build_inputs(AutoProcessor.from_pretrained(model_dir), model.config, items, responses)
    with torch.no_grad():
        return response_logprobs(model, batch)


def gathered(module):
    """Every parameter whole for the duration (ZeRO-3 partitions them; a no-op otherwise)."""
    import contextlib

    import deepspeed

    params = [p for p in module.parameters() if hasattr(p, "ds_id")]
    return deepspeed.zero.GatheredParameters(params) if params else contextlib.nullcontext()


def test_lora_config_is_checked_at_load():
    """Catches a bad pattern failing mid-run (or adapting nothing silently): refused when the config loads."""
    with pytest.raises(ConfigError, match="target_modules is not a valid regular expression"):
        lora_cfg("learner.lora.target_modules=(")
    with pytest.raises(ConfigError, match="learner.lora.rank"):
        lora_cfg("learner.lora.rank=-1")
    with pytest.raises(ConfigError, match="sync=adapter needs 0 < rank <= 512"):
        lora_cfg("learner.lora.rank=0", "learner.lora.sync=adapter")
    # the engines serve the smallest of vLLM's LoRA ranks that holds the adapter's; merged weights need no LoRA
    from actors.vllm_inputs import lora_engine_kwargs

    assert lora_cfg("learner.lora.rank=20", "learner.lora.sync=adapter").learner.lora.served_rank == 20
    assert lora_engine_kwargs(20)["max_lora_rank"] == 32 and lora_engine_kwargs(8)["max_lora_rank"] == 8
    assert lora_cfg().learner.lora.served_rank == 0 and lora_engine_kwargs(0) == {}


@pytest.mark.parametrize("stage", [0, 3])
def test_a_lora_update_moves_only_the_adapters_and_sends_only_the_adapted_layers(stage, tiny_model_dir, items):
    """After SFT and RL steps with LoRA: every base weight is bit-identical (catches the base model training,
    i.e. twice the memory and no longer LoRA), the adapters moved; the KL reference is the base model (the
    adapters off: its log-probs equal the plain model's, so no second copy is needed, and the step's KL is not
    zero); what a sync sends is exactly the adapted layers' weights, merged (loading them into the plain model
    gives the learner's log-probs: catches unmerged or mis-scaled weights, and peft's names reaching vLLM)."""
    from learner.lora import adapters_off

    learner = Learner(lora_cfg(f"learner.zero_stage={stage}"), str(tiny_model_dir))
    assert learner.reference is None  # no second model
    base_before = dict(learner.named_weights())  # merged = base while B is zero
    with gathered(learner.engine.module):
        lora_before = {n: p.detach().clone() for n, p in lora_parameters(learner.engine.module)}
    assert lora_before and all(p.requires_grad for _, p in lora_parameters(learner.engine.module))
    tgt = targets(learner, items)
    losses = [learner.sft_step(items, tgt) for _ in range(3)]
    assert losses[-1] < losses[0], losses
    rl = rollouts(items, tgt)
    its, resp = [r.item for r in rl], [r.response_ids for r in rl]
    stats = learner.rl_step(rl, group_size=3)
    assert stats["kl"] > 1e-6 and stats["skipped_steps"] == 0  # the reference (base) differs from the policy
    with adapters_off(learner.engine.module):
        ref = learner.logprobs(its, resp)
    assert torch.allclose(ref, base_logprobs(tiny_model_dir, its, resp), atol=1e-5)
    sent = learner.state_dict_for_rollout()
    layers = learner.model_config.text_config.num_hidden_layers
    assert len(sent) == ADAPTED_PER_LAYER * layers and not any(".lora_" in n or "base_layer" in n for n in sent)
    assert all(n.startswith("model.language_model.layers.") for n in sent)
    # the base weights never moved (the merged ones did); the adapters did
    module = learner.engine.module
    with gathered(module):
        bases = {name: layer.base_layer.weight.detach().clone() for name, layer in adapted_layers(module)}
        moved = max((p.detach() - lora_before[n]).abs().max().item() for n, p in lora_parameters(module))
    assert all(torch.equal(bases[n], base_before[n]) for n in bases) and moved > 0
    after = dict(learner.named_weights())
    assert all(torch.equal(after[n], base_before[n]) for n in after if n not in sent)
    assert all(not torch.equal(sent[n], base_before[n]) for n in sent)
    # the merged weights are the model the learner computes
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from learner.batch import build_inputs, response_logprobs

    plain = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    plain.load_state_dict(after, strict=True)
    batch = build_inputs(AutoProcessor.from_pretrained(tiny_model_dir), plain.config, its, resp)
    with torch.no_grad():
        assert torch.allclose(response_logprobs(plain, batch), learner.logprobs(its, resp), atol=1e-5)
    with pytest.raises(ValueError, match="start the RL learner from the SFT model's hf/"):
        learner.reset_reference()


def test_lora_resume_is_bit_exact_and_the_checkpoint_holds_merged_and_adapter(tiny_model_dir, items, tmp_path):
    """Catches adapters or their optimizer state missing from the checkpoint (the resumed losses differ), hf/ that
    is the base model or holds peft's names (transformers loads it strictly, with the merged weights), an adapter/
    folder peft cannot apply on top of the base model, and a run's final hf/ written without its adapter/."""
    cfg = lora_cfg("learner.zero_stage=2")
    a = Learner(cfg, str(tiny_model_dir))
    tgt = targets(a, items)
    for _ in range(2):
        a.sft_step(items, tgt)
    a.save(tmp_path / "ckpt")
    merged = dict(a.named_weights())
    expect = [a.sft_step(items, tgt) for _ in range(2)]
    b = Learner(cfg, str(tiny_model_dir))
    assert b.load(tmp_path / "ckpt") == 2
    assert [b.sft_step(items, tgt) for _ in range(2)] == expect  # identical floats
    from peft import PeftModel
    from transformers import Qwen2_5_VLForConditionalGeneration

    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "ckpt" / "hf", dtype=torch.float32)
    assert all(torch.equal(p, merged[n]) for n, p in hf.state_dict().items() if n in merged)
    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32)
    applied = PeftModel.from_pretrained(base, tmp_path / "ckpt" / "adapter").merge_and_unload()
    # a run's final copy (stages call save_hf, not save) has its adapter beside hf/ too
    a.save_hf(tmp_path / "run" / "hf")
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    for n, p in applied.state_dict().items():
        assert torch.allclose(p, merged[n], atol=1e-6), n


@pytest.mark.vllm
def test_after_a_merged_sync_vllm_equals_the_lora_learner(vllm_engine, tiny_model_dir, items):
    """The run's sync of a LoRA learner (the adapted layers' merged weights only) into the session's vLLM engine,
    started from the base model: vLLM's log-probs of its samples equal the learner's (k3 < 1e-9 in float32).
    Catches layers left out of the sync, unmerged adapters and names vLLM does not map. The engine gets the
    original weights back afterwards."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from tests.test_families import _sample_and_score, _sync

    learner = Learner(lora_cfg("learner.zero_stage=0"), str(tiny_model_dir), with_reference=False)
    tgt = targets(learner, items)
    for _ in range(3):
        learner.sft_step(items, tgt)
    sent = learner.state_dict_for_rollout()
    original = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    try:
        _sync(vllm_engine, sent)
        _, _, k3, most = _sample_and_score(vllm_engine, learner, items, seed=5)
        assert k3 < 1e-9 and most < 1e-4, (k3, most)
    finally:
        _sync(vllm_engine, {n: original[n] for n in sent})


@pytest.mark.vllm
def test_an_adapter_sync_run_serves_the_learner_policy_through_vllm_lora(ray_cluster, sft_model, demo_data, tmp_path):
    """Three RL steps from the SFT model with ``learner.lora.sync=adapter``: each step's rollouts come from vLLM
    with the adapter the learner sent (through the run's transport, written by the receiver, served by vLLM's
    LoRA support), so vLLM's log-probs equal the learner's (mismatch KL < 1e-6) at steps 2 and 3, while the
    policy has moved away from the base model (KL to the reference > 1e-4: a worker that kept serving the base
    model, or an adapter loaded once and never replaced, would show that much mismatch). Each sync carries the
    adapters only (a tenth of the merged layers' bytes: catches a silent fall-back to merged weights)."""
    from cluster.run_dir import RunDir
    from commands.stages import run_train
    from tests.conftest import config

    out = tmp_path / "rl"
    torch.manual_seed(0)
    run_train(
        config(
            out,
            sft_model,
            demo_data,
            "trainer.steps=3",
            "trainer.checkpoint_every=0",
            "learner.lr=1e-3",
            "learner.lora.rank=8",
            "learner.lora.alpha=16",
            "learner.lora.sync=adapter",
        )
    )
    rows = RunDir(out).metrics()
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["sync_updated"] == 1 and r["sync_failed"] == 0 for r in rows), rows
    assert all(r["mismatch_kl"] < 1e-6 for r in rows[1:]), [r["mismatch_kl"] for r in rows]
    assert rows[-1]["kl"] > 1e-4, rows[-1]["kl"]
    assert 0 < rows[-1]["sync_mib"] < 0.2, rows[-1]["sync_mib"]
    assert (out / "adapter" / "adapter_config.json").is_file()
