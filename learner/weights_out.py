"""What leaves the learner: its weights under their transformers names (for the rollout workers and hf/), and its
checkpoints (DeepSpeed state, RNG, the LoRA adapter). A mixin of ``learner.engine.Learner``, which provides
``engine`` (the DeepSpeed engine), ``processor``, ``step`` and ``nonfinite_losses``.

With LoRA (``learner.lora``) an adapted layer leaves as its merged weight W + s * B @ A; the adapters themselves
stay in the learner (and in ``adapter/`` beside hf/). Only the adapted layers change during a LoRA run, so they are
all a rollout worker needs after an update.
"""

from __future__ import annotations

import contextlib
import pickle
import random
from pathlib import Path
from collections.abc import Iterator

import numpy as np
import torch

from learner.deepspeed_setup import rank
from learner.lora import adapted_layers, base_model, hf_name, is_lora, lora_parameters, merged_weight


class LearnerWeights:
    def _weight_units(self, trainable_only: bool) -> list[tuple[str, list, object]]:
        """(transformers name, the parameters it is made of, how to make it) for every weight that leaves: a plain
        parameter is itself; an adapted layer's weight is merged from its base weight and adapters."""
        module = self.engine.module
        if not is_lora(module):
            return [(n, [p], p) for n, p in module.named_parameters() if p.requires_grad or not trainable_only]
        merged = {name: layer for name, layer in adapted_layers(module)}
        units = []
        for n, p in module.named_parameters():
            name = hf_name(n)
            if name is None:  # an adapter's own parameter: part of its layer's merged weight
                continue
            if name in merged:
                layer = merged[name]
                units.append(
                    (
                        name,
                        [layer.base_layer.weight, layer.lora_A["default"].weight, layer.lora_B["default"].weight],
                        layer,
                    )
                )
            elif not trainable_only:  # everything else is frozen under LoRA and never changes
                units.append((name, [p], p))
        return units

    def named_weights(
        self, keep: bool = True, bucket_mb: float = 64, trainable_only: bool = False
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Copies of the full parameters under their Hugging Face names, on the CPU. Under ZeRO-3 they are gathered
        about ``bucket_mb`` at a time (one gather per bucket, not per tensor). Every rank must iterate it (the
        gathers are collectives); ``keep=False`` (ranks other than the writer) takes part without copying.
        ``trainable_only``: only what an update changes (the trainable parameters; with LoRA the adapted layers'
        merged weights): the frozen ones (``learner.freeze``, LoRA's base model) never change."""
        import deepspeed

        limit = bucket_mb * 2**20

        def flush(group):
            partitioned = [p for _, params, _ in group for p in params if hasattr(p, "ds_id")]
            gathered = deepspeed.zero.GatheredParameters(partitioned) if partitioned else contextlib.nullcontext()
            with gathered:
                for name, _, source in group:
                    if keep:  # a snapshot: the live weights change under the next update
                        value = source.detach() if isinstance(source, torch.Tensor) else merged_weight(source)
                        yield name, value.to("cpu", copy=True)

        group, size = [], 0
        for unit in self._weight_units(trainable_only):  # the same on every rank: the collectives stay matched
            group.append(unit)
            size += sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for p in unit[1])
            if size >= limit:
                yield from flush(group)
                group, size = [], 0
        if group:
            yield from flush(group)

    def state_dict_for_rollout(self, keep: bool = True) -> dict[str, torch.Tensor]:
        """What the rollout workers need after an update: the weights it changed only. The frozen ones (the vision
        tower by default; with LoRA all but the adapted layers) are the ones every worker loaded from
        ``model.path`` at start, as the learner did, and never change; vLLM's in-place reload keeps a layer that
        receives nothing as it is. With ``learner.lora.sync=adapter``: the adapters alone, under peft's names
        (``rollout_adapter_config`` says so)."""
        if self.rollout_adapter_config() is not None:
            return self.adapter_weights(keep)
        return dict(self.named_weights(keep, trainable_only=True))

    def rollout_adapter_config(self) -> dict | None:
        """The peft config the rollout workers serve the adapters with (``learner.lora.sync=adapter``), or None
        when they receive weights."""
        if not (is_lora(self.engine.module) and self.cfg.lora.sync == "adapter"):
            return None
        config = self.engine.module.peft_config["default"].to_dict()
        # as peft writes adapter_config.json (sets as lists); inference only on the serving side
        return {**{k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}, "inference_mode": True}

    def adapter_weights(self, keep: bool = True) -> dict[str, torch.Tensor]:
        """Copies of the adapters, on the CPU, under the names peft saves them with (adapter_model.safetensors).
        Every rank must call it (the ZeRO-3 gather is a collective); ``keep=False`` takes part without copying."""
        import deepspeed
        from peft import get_peft_model_state_dict

        module = self.engine.module
        partitioned = [p for _, p in lora_parameters(module) if hasattr(p, "ds_id")]
        with deepspeed.zero.GatheredParameters(partitioned) if partitioned else contextlib.nullcontext():
            if not keep:
                return {}
            return {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(module).items()}

    # -- checkpoints --------------------------------------------------------------------------------------------
    def save(self, directory: str | Path, with_hf: bool = True) -> Path:
        """DeepSpeed state (model, optimizer, scheduler) + RNG states + step, and a Hugging Face copy under hf/
        (with LoRA: the merged model, and the adapter under adapter/). Every rank calls it (DeepSpeed's save is a
        collective)."""
        directory = Path(directory)
        client = {"step": self.step, "nonfinite_losses": self.nonfinite_losses, "rng": _rng_state()}
        tag = f"step{self.step}"
        self.engine.save_checkpoint(str(directory), tag=tag, client_state=client)
        # DeepSpeed keeps rank 0's client state only: each rank's own RNG goes beside it
        (directory / tag).mkdir(parents=True, exist_ok=True)  # a rank that wrote no DeepSpeed file there (ZeRO-0)
        torch.save(_rng_state(), directory / tag / f"rng_rank{rank()}.pt")
        if with_hf:
            self.save_hf(directory / "hf")
        return directory

    def save_hf(self, directory: str | Path) -> None:
        """A Hugging Face copy (transformers and vLLM load it; with LoRA the merged model, and the adapter beside it
        in ``adapter/``). Every rank takes part in the ZeRO-3 gathers; only rank 0 writes."""
        writer = rank() == 0
        state = dict(self.named_weights(keep=writer))  # every weight; the others take part in the gathers only
        if writer:
            base_model(self.engine.module).save_pretrained(Path(directory), state_dict=state)
            self.processor.save_pretrained(Path(directory))
        if is_lora(self.engine.module):
            self.save_adapter(Path(directory).with_name("adapter"))

    def save_adapter(self, directory: str | Path) -> None:
        """The LoRA adapter as peft writes it (``adapter_config.json``, ``adapter_model.safetensors``): peft and
        vLLM load it on top of the model the run started from."""
        state = self.adapter_weights(keep=rank() == 0)
        if rank() == 0:
            self.engine.module.save_pretrained(Path(directory), state_dict=state)

    def load(self, directory: str | Path, tag: str | None = None) -> int:
        path, client = self.engine.load_checkpoint(str(directory), tag=tag)
        if client is None:
            raise FileNotFoundError(f"no learner checkpoint in {directory}")
        self.step = client["step"]
        self.nonfinite_losses = client.get("nonfinite_losses", 0)
        mine = Path(directory) / (tag or f"step{self.step}") / f"rng_rank{rank()}.pt"
        # weights_only: tensors and numbers only, nothing that runs code (DeepSpeed's own files are another matter:
        # cluster.run_dir.RunDir.check_private refuses a checkpoint others could write)
        try:
            state = torch.load(mine, weights_only=True) if mine.is_file() else client["rng"]
        except pickle.UnpicklingError:  # written before the states were plain tensors: rank 0's, loaded already
            state = client["rng"]
        _set_rng_state(state)
        return self.step


def _rng_state() -> dict:
    """This process's RNG states as tensors and numbers, which ``torch.load(weights_only=True)`` reads back."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "python": (version, torch.tensor(internal, dtype=torch.int64), python_gauss),
    }


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    kind, keys, pos, has_gauss, gauss = s["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, gauss))
    version, internal, python_gauss = s["python"]
    random.setstate((version, tuple(int(x) for x in internal), python_gauss))
