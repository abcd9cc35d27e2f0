"""What every stage of a run stands on: the Ray cluster, the local Redis (when asked for), the dataset with its
decoder, and the prompts. One ``Stack`` per command; stages (SFT, RL, evaluation) share it."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from videoqa.families import family_of
from videoqa.loader import LoadedSample, MediaLoader
from videoqa.schema import RowError, Sample, load_samples

log = logging.getLogger("videop2r")


class Dataset:
    """The rows of one dataset file and their decoder. Rows whose media is missing or corrupt are skipped and
    counted (``skipped``); the caller takes replacements."""

    def __init__(self, cfg, file: str, sampling=None):
        self.root = Path(cfg.data.dir)
        self.path = self.root / file
        self.samples: list[Sample] = load_samples(self.path)
        if not self.samples:
            raise RowError(f"{self.path} has no rows: point the config at a dataset file with rows")
        # frame sides in multiples of the model family's patch x merge (28 for Qwen2.5-VL, 32 for Qwen3-VL)
        sampling = replace(sampling or cfg.video.sampling(), factor=family_of(cfg.model.path).pixel_factor)
        self.loader = MediaLoader(
            self.root,
            sampling,
            cfg.data.loader_workers,
            cfg.data.on_bad_media,
            cfg.video.image_max_pixels,
            media_roots=cfg.data.media_roots,
        )

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def skipped(self):
        return self.loader.skipped

    def load(self, indices: list[int]) -> list[tuple[int, LoadedSample]]:
        """Decoded rows (each video once), in order, without the ones that failed to decode."""
        wanted = [self.samples[i] for i in indices]
        by_id = {}
        for item in self.loader(wanted):
            by_id.setdefault(item.sample.problem_id, item)
        return [(i, by_id[self.samples[i].problem_id]) for i in indices if self.samples[i].problem_id in by_id]


class Stack:
    def __init__(self, cfg, verbose: bool = False):
        from cluster.across_hosts import alive_nodes, check_reachable
        from cluster.preflight import check_local_redis_across_hosts
        from cluster.services import RedisServer, init_ray

        import ray

        self.cfg, self.redis = cfg, None
        self.owns_ray = False
        if not ray.is_initialized():
            init_ray(verbose, num_cpus=logical_cpus(cfg))
            self.owns_ray = True
        # before anything starts: a loopback address would name another machine on every other host
        check_reachable(cfg, self.redis_url())
        if cfg.cache.start_local:
            import os

            if os.environ.get(cfg.cache.url_env):
                log.warning(
                    "cache.start_local: ignoring %s (this run starts and uses its own redis-server)", cfg.cache.url_env
                )
            # a private local cluster is this machine alone: loopback; the hosts of a cluster this command joined
            # (now or once it grows) reach it on this node's address
            nodes = alive_nodes()
            check_local_redis_across_hosts(cfg.cache, nodes)
            private = not os.environ.get("RAY_ADDRESS") and nodes == 1
            self.redis = RedisServer(host="127.0.0.1" if private else ray.util.get_node_ip_address())
            # start_local wins over the environment everywhere (reward actors read the config, not the variables):
            # the URL carries the server's random password
            cfg.cache.url, cfg.cache.url_env, cfg.cache.password_env = self.redis.url, "", ""
            cfg.cache.start_local = False  # the stages of this command share this one
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.cfg.model.path)
        return self._tokenizer

    def redis_url(self) -> str:
        import os

        return (self.cfg.cache.url_env and os.environ.get(self.cfg.cache.url_env)) or self.cfg.cache.url

    def redis_password(self) -> str | None:
        import os

        return (self.cfg.cache.password_env and os.environ.get(self.cfg.cache.password_env)) or None

    def close(self) -> None:
        import ray

        if self.owns_ray and ray.is_initialized():
            ray.shutdown()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def logical_cpus(cfg) -> int:
    """CPUs a private local cluster announces: every role's reservation (plus room to scale), at least the
    machine's cores. Roles reserve logical CPUs; on a 2-core box they take turns on the real ones."""
    import math
    import os

    need = (
        cfg.learner.num_ranks * cfg.learner.num_cpus
        + cfg.rollout.num_workers * cfg.rollout.num_cpus * 2
        + cfg.reward.num_workers * cfg.reward.num_cpus
    )
    if cfg.judge.backend == "vllm":
        need += cfg.judge.num_engines * cfg.judge.engine.num_cpus
    return max(os.cpu_count() or 1, math.ceil(need) + 1)


def check_judge_fits(cfg, samples) -> None:
    """The oracle judge knows only the synthetic task's facts: on other data every verdict would be missing."""
    if cfg.judge.backend == "oracle" and samples and not any("facts" in s.extra for s in samples):
        from cluster.config_loader import ConfigError

        raise ConfigError(
            "judge.backend=oracle needs the synthetic task's facts, which these rows lack: use "
            "judge.backend=vllm or judge.backend=http (see configs/judge-http.yaml)"
        )
