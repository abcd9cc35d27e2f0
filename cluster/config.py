"""The run configuration: one typed section per part of the system. YAML files under configs/ set it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from cluster.config_loader import Section
from videoqa.video import FrameSampling


class RunSection(Section):
    name: str = "demo"
    out_dir: str = "runs/demo"  # checkpoints, rollout logs, generated data and model go below this
    seed: int = 0


class TinyModelSection(Section):
    """Size of the random Qwen2.5-VL built by `videop2r make-tiny-model` (CPU attention needs head_dim 64)."""

    hidden_size: int = Field(128, ge=64)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(2, ge=1)
    num_kv_heads: int = Field(1, ge=1)
    intermediate_size: int = Field(256, ge=1)
    vision_depth: int = Field(2, ge=1)
    vision_hidden_size: int = Field(32, ge=8)
    vision_heads: int = Field(1, ge=1)
    vocab_size: int = Field(1024, ge=300)  # the tokenizer's BPE vocabulary, before special tokens

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size must be divisible by num_heads, and num_heads by num_kv_heads")
        if self.vision_hidden_size % self.vision_heads:
            raise ValueError("vision_hidden_size must be divisible by vision_heads")
        return self


class ModelSection(Section):
    path: str = "runs/demo/tiny-model"  # a Hugging Face folder (local path) of a Qwen2.5-VL model
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class VideoSection(Section):
    """Frame sampling (qwen-vl-utils keys). Paper: 16 frames x 128*28*28 px (train), 32 x 256*28*28 (eval)."""

    fps: float = Field(2.0, gt=0)
    min_frames: int = Field(4, ge=2)
    max_frames: int = Field(16, ge=2)
    nframes: int | None = Field(None, ge=2)
    min_pixels: int = Field(4 * 28 * 28, ge=28 * 28)
    max_pixels: int = Field(128 * 28 * 28, ge=28 * 28)
    image_max_pixels: int = Field(256 * 28 * 28, ge=28 * 28)

    def sampling(self) -> FrameSampling:
        return FrameSampling(self.fps, self.min_frames, self.max_frames, self.nframes, self.min_pixels, self.max_pixels)


class DataSection(Section):
    dir: str = "runs/demo/data"  # where `make-synthetic` writes (or where a real dataset lives)
    train_file: str = "train.json"  # relative to dir; JSON, JSONL or Parquet
    cot_file: str = "cot.json"
    eval_file: str = "eval.json"
    synthetic_n: int = Field(200, ge=1)
    synthetic_seed: int = 0
    synthetic_frames: int = Field(16, ge=2)
    synthetic_size: int = Field(112, ge=28)
    loader_workers: int = Field(2, ge=1)
    on_bad_media: Literal["skip", "raise"] = "skip"


class RolloutSection(Section):
    """vLLM rollout workers. CPU vs GPU is only this: device, resources, tensor parallelism."""

    device: Literal["cpu", "cuda"] = "cpu"
    num_workers: int = Field(1, ge=1)
    num_cpus: float = Field(1, gt=0)
    num_gpus: float = Field(0, ge=0)
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)
    kv_cache_gib: float = Field(1, gt=0)  # VLLM_CPU_KVCACHE_SPACE on the CPU backend
    max_model_len: int = Field(2048, ge=128)
    # None = automatic: eager on the CPU (torch.compile costs ~13 s at start and saves little for small models),
    # compiled graphs on CUDA.
    enforce_eager: bool | None = None
    group_size: int = Field(8, ge=1)  # G rollouts per prompt (paper: 8)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _device_resources(self):
        if self.device == "cuda" and self.num_gpus <= 0:
            raise ValueError("rollout.device=cuda needs rollout.num_gpus > 0")
        return self


class Config(Section):
    run: RunSection = RunSection()
    model: ModelSection = ModelSection()
    tiny_model: TinyModelSection = TinyModelSection()
    data: DataSection = DataSection()
    video: VideoSection = VideoSection()
    rollout: RolloutSection = RolloutSection()
