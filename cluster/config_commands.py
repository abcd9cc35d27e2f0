"""The config sections of the commands around training: `videop2r eval`, `videop2r make-cot`, the demo and the
tiny model it builds (re-exported by cluster/config.py, whose ``Config`` holds them)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from cluster.config_loader import Section
from rewards import PROBLEM_TYPES
from videoqa.video import PIXEL_FACTOR, FrameSampling

if TYPE_CHECKING:
    from cluster.config import VideoSection


class EvalSection(Section):
    """`videop2r eval` on benchmark files, with the paper's evaluation settings as defaults (32 frames at
    256x28x28 pixels, temperature 0.01, top_p 0.001); the demo's held-out measurements use the same code with its
    own settings (configs/demo.yaml)."""

    benchmarks: list[str] = []  # files in the Video-R1 evaluation format (JSON, JSONL or Parquet)
    out_dir: str = "runs/eval"  # per-sample Parquet, summary.json and results.md (resumes when rerun)
    prompt: Literal["process", "video-r1"] = "process"  # video-r1: their think/answer prompt, to compare numbers
    max_rows: int | None = Field(None, ge=1)  # per benchmark (the first rows); None: all
    temperature: float = Field(0.01, ge=0)  # sampling temperature (paper: 0.01)
    top_p: float = Field(0.001, gt=0, le=1)  # nucleus sampling (paper: 0.001)
    max_tokens: int = Field(1024, ge=1)  # most response tokens
    nframes: int = Field(32, ge=2)  # frames per video (paper: 32)
    max_pixels: int = Field(256 * 28 * 28, ge=28 * 28)  # most pixels per frame (paper: 256x28x28)
    batch_rows: int = Field(64, ge=1)  # rows generated and saved together: a killed run loses at most these
    judge: bool = False  # also judge each observation (the perception sufficiency rate) with the judge section

    def sampling(self, video: VideoSection, factor: int = PIXEL_FACTOR) -> FrameSampling:
        """Frames for evaluation: ``nframes`` frames of at most ``max_pixels`` (the video section's minimum)."""
        return FrameSampling(
            video.fps,
            video.min_frames,
            max(video.max_frames, self.nframes),
            self.nframes,
            min(video.min_pixels, self.max_pixels),
            self.max_pixels,
            factor,
        )


class CotSection(Section):
    """`videop2r make-cot`: the paper's CoT funnel (teacher generation at temperature 0, answer accuracy >=
    0.6, judge says the observation suffices). The teacher is model.path; the judge is the judge section."""

    input: str = ""  # Video-R1 JSON, JSONL or Parquet rows (media paths relative to the file)
    out_dir: str = "runs/cot"  # cot.parquet (SFT rows), funnel.parquet, funnel.json; resumes when rerun
    max_rows: int | None = Field(None, ge=1)  # the first rows only; None: all
    samples: int = Field(1, ge=1)  # teacher outputs per question; the most accurate one that passes is kept
    temperature: float = Field(0.0, ge=0)  # paper: 0 (one sample); more samples need a temperature > 0
    top_p: float = Field(1.0, gt=0, le=1)  # the teacher's nucleus sampling
    max_tokens: int = Field(1024, ge=1)  # most tokens of a teacher output
    min_accuracy: float = Field(0.6, ge=0, le=1)  # step 2: the paper drops answers scoring under 0.6
    batch_rows: int = Field(64, ge=1)  # rows generated, judged and saved together


class DemoSection(Section):
    """The demo's synthetic task (see toy/synthetic.py) and its controls (GRPO by default; more SFT)."""

    # demo: one large moving shape, fixed option order (learnable by the tiny model); varied: harder
    style: Literal["varied", "demo"] = "demo"
    mix: dict[str, float] | None = None  # training-row weights per problem type; None: equal
    eval_rows: int = Field(200, ge=5)  # held-out questions (their problem types: eval_mix)
    # held-out rows per problem type; None: all five equally. Weighting the trained types measures RL's effect on
    # more questions of the kind it trains (the summary's trained-type gain); the other types are still reported
    eval_mix: dict[str, float] | None = None
    # validation rows (the training mix, their own seed; never the held-out rows): SFT stops once greedy accuracy
    # on them reaches sft_stop_accuracy, checked every sft_check_every steps, so RL starts where the skill has
    # appeared but is far from done (sft.steps is the upper bound). 0 disables the check.
    val_rows: int = Field(48, ge=0)
    sft_stop_accuracy: float = Field(0.5, ge=0, le=1)  # SFT stops at this validation accuracy (see val_rows)
    sft_check_every: int = Field(20, ge=1)  # SFT steps between validation checks
    # GRPO from the same SFT checkpoint and seeds, compared with PA-GRPO row by row (about 2 min on 2 cores)
    grpo_control: bool = True
    controls: bool = False  # also SFT continued for the RL stage's wall time (the "is it just more training?" control)

    @model_validator(mode="after")
    def _mixes(self):
        for name in ("mix", "eval_mix"):
            mix = getattr(self, name)
            if mix is None:
                continue
            bad = sorted(k for k in mix if k not in PROBLEM_TYPES)
            if bad or any(not w >= 0 for w in mix.values()) or not sum(mix.values()) > 0:
                raise ValueError(
                    f"demo.{name}={mix}: weights >= 0 (at least one > 0) for problem types among "
                    f"{', '.join(PROBLEM_TYPES)}" + (f"; unknown: {', '.join(bad)}" if bad else "")
                )
        return self

    @property
    def trained_types(self) -> list[str]:
        """The problem types of the training rows (all five when mix is None)."""
        return sorted(PROBLEM_TYPES if self.mix is None else [t for t, w in self.mix.items() if w > 0])


class TinyModelSection(Section):
    """Family and size of the random model built by `videop2r make-tiny-model` and the demo (CPU attention needs
    head_dim 64)."""

    family: Literal["qwen2_5_vl", "qwen3_vl"] = "qwen2_5_vl"  # videoqa.families: Qwen2.5-VL or Qwen3-VL

    hidden_size: int = Field(128, ge=64)  # the language model's width
    num_layers: int = Field(2, ge=1)  # decoder layers
    num_heads: int = Field(2, ge=1)  # attention heads
    num_kv_heads: int = Field(1, ge=1)  # key/value heads
    intermediate_size: int = Field(256, ge=1)  # MLP width
    vision_depth: int = Field(2, ge=1)  # vision blocks
    vision_hidden_size: int = Field(32, ge=8)  # the vision tower's width
    vision_heads: int = Field(1, ge=1)  # the vision tower's heads
    vocab_size: int = Field(1024, ge=300)  # the tokenizer's BPE vocabulary, before special tokens

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size must be divisible by num_heads, and num_heads by num_kv_heads")
        if self.vision_hidden_size % self.vision_heads:
            raise ValueError("vision_hidden_size must be divisible by vision_heads")
        return self
