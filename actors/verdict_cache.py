"""The judge-verdict cache in Redis, shared by every reward worker.

Keys are ``rewards.verdict_key`` hashes (judge identity, prompt version, question, correct answer, observation,
data type); each entry also names the judge that gave it, and the scorer ignores an entry of another judge;
values are JSON (never pickle) with a TTL. Only real verdicts are stored: a failure is not cached, so it is
retried next time. When Redis is unreachable the cache steps aside: one warning per outage, a counter, and
lookups miss until ``retry_after_s`` has passed; scoring never waits on a dead Redis for more than the socket
timeout.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter

from actors.redaction import redact_url
from actors.score_stats import CacheResult

log = logging.getLogger(__name__)
PREFIX = "videop2r:verdict:"


class VerdictCache:
    def __init__(
        self,
        url: str,
        password: str | None = None,
        ttl_s: int = 7 * 24 * 3600,
        socket_timeout_s: float = 0.5,
        retry_after_s: float = 10.0,
    ):
        import redis

        self.url, self.ttl_s, self.retry_after_s = url, ttl_s, retry_after_s
        self._client = redis.Redis.from_url(
            url,
            password=password,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            retry_on_timeout=False,
        )
        # any Redis error is an outage to score through: connection loss, timeouts, and the server refusing
        # (OOM under maxmemory, READONLY during a failover, NOPERM, a wrong password)
        self._errors = (redis.RedisError, OSError)
        self._down_until = 0.0
        self._down_since: float | None = None  # the start of the current outage (or of its unreported part)
        self._down_seconds = 0.0  # ended outages, not yet reported
        self._warned = False
        self.stats: Counter[str] = Counter()  # keyed by CacheResult

    @classmethod
    def from_config(cls, cache) -> VerdictCache | None:
        """From a ``CacheSection``: the URL may come from ``url_env``, the password only from ``password_env``."""
        if not cache.enabled:
            return None
        url = (cache.url_env and os.environ.get(cache.url_env)) or cache.url
        password = (cache.password_env and os.environ.get(cache.password_env)) or None
        return cls(url, password, cache.ttl_s, cache.socket_timeout_s, cache.retry_after_s)

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def take_down_seconds(self) -> float:
        """Seconds Redis was unreachable since the last call (an outage still going on counts up to now)."""
        seconds, self._down_seconds = self._down_seconds, 0.0
        if self._down_since is not None:
            now = time.monotonic()
            seconds, self._down_since = seconds + now - self._down_since, now
        return seconds

    def _back_up(self) -> None:
        self._warned = False
        if self._down_since is not None:  # the outage ended at this successful call
            self._down_seconds += time.monotonic() - self._down_since
            self._down_since = None

    def _failed(self, err: Exception) -> None:
        self.stats[CacheResult.UNAVAILABLE] += 1
        self._down_until = time.monotonic() + self.retry_after_s
        if self._down_since is None:
            self._down_since = time.monotonic()
        if not self._warned:  # once per outage; the counter keeps the total
            log.warning(
                "Redis verdict cache at %s unavailable (%s); judging without it",
                redact_url(self.url),
                type(err).__name__,
            )
            self._warned = True

    def get_many(self, keys: list[str]) -> list[dict | None]:
        if not keys:
            return []
        if not self.available:
            self.stats[CacheResult.MISSES] += len(keys)
            self.stats[CacheResult.SKIPPED_UNAVAILABLE] += len(keys)
            return [None] * len(keys)
        try:
            raw = self._client.mget([PREFIX + k for k in keys])
        except self._errors as e:
            self._failed(e)
            self.stats[CacheResult.MISSES] += len(keys)
            return [None] * len(keys)
        self._back_up()
        out = []
        for value in raw:
            entry = None
            if value is not None:
                try:
                    entry = json.loads(value)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    pass
                if not isinstance(entry, dict):  # not ours, or damaged: judged again
                    self.stats[CacheResult.CORRUPT] += 1
                    entry = None
            out.append(entry)
        hits = sum(v is not None for v in out)
        self.stats[CacheResult.HITS] += hits
        self.stats[CacheResult.MISSES] += len(keys) - hits
        return out

    def put_many(self, values: dict[str, dict]) -> None:
        if not values or not self.available:
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for k, v in values.items():
                pipe.set(PREFIX + k, json.dumps(v), ex=self.ttl_s)
            pipe.execute()
            self.stats[CacheResult.WRITES] += len(values)
            self._back_up()
        except self._errors as e:
            self._failed(e)
