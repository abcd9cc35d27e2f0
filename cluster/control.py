"""The run's control plane in Redis, keyed by run id: the desired number of rollout workers (set by
``videop2r scale``, applied by the driver at the next step boundary) and the driver's last reported state.

Redis being away never stops a run: the driver keeps its current worker count and says so once.
"""

from __future__ import annotations

import json
import logging

log = logging.getLogger(__name__)


class ControlPlane:
    def __init__(self, url: str, run_id: str, password: str | None = None, timeout_s: float = 0.5):
        import redis

        self.run_id = run_id
        self._client = redis.Redis.from_url(
            url, password=password, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._errors = (redis.RedisError, OSError)
        self._warned = False
        self.unavailable = 0  # reads or writes that failed
        self.rejected = 0  # desired counts read and refused (out of range or not a number): a run total
        self._last_refused = None  # warned about once, until another value is refused

    def _key(self, name: str) -> str:
        return f"videop2r:run:{self.run_id}:{name}"

    def _failed(self, e: Exception) -> None:
        self.unavailable += 1
        if not self._warned:
            log.warning(
                "control plane (Redis) unavailable (%s): keeping the current rollout worker count", type(e).__name__
            )
            self._warned = True

    def set_desired_workers(self, n: int) -> None:
        """For ``videop2r scale``: raises when Redis cannot be reached (the user must know it did not apply)."""
        if n < 1:
            raise ValueError(f"--rollout-workers must be >= 1, got {n}")
        self._client.set(self._key("desired_rollout_workers"), int(n))

    def desired_workers(self, most: int | None = None) -> int | None:
        """The desired rollout worker count, or None: none set, Redis away, or a value refused (not a number, below
        1 or above ``most``; refused values are counted in ``rejected`` and warned about once each)."""
        try:
            value = self._client.get(self._key("desired_rollout_workers"))
        except self._errors as e:
            self._failed(e)
            return None
        self._warned = False
        if value is None:
            return None
        try:
            n = int(value)
        except ValueError:
            n = None
        if n is None or n < 1 or (most is not None and n > most):
            self.rejected += 1
            if value != self._last_refused:
                self._last_refused = value
                log.warning(
                    "ignoring a desired rollout worker count of %r: it must be a number from 1 to %s "
                    "(rollout.max_workers)",
                    value[:40] if isinstance(value, bytes) else value,
                    most,
                )
            return None
        return n

    def report(self, state: dict) -> None:
        try:
            self._client.set(self._key("state"), json.dumps(state, default=float))  # `videop2r scale` reads it
        except self._errors as e:
            self._failed(e)

    def state(self) -> dict | None:
        value = self._client.get(self._key("state"))
        return json.loads(value) if value else None
