"""Waiting for room on the cluster: a start-up clock that stops while the autoscaler brings nodes up, and, when a
wait gives up, a message saying per node what the waiting actors lack (a sum of free resources over the cluster
hides that no single node has them).

Plain logic: ``actors/cluster_view.py`` asks Ray for the autoscaler's status and the nodes."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from collections.abc import Callable

log = logging.getLogger(__name__)

# The longest a start-up wait is extended while the autoscaler reports nodes pending: a GPU pod pulling a large image
# takes minutes; a pod that can never be scheduled stays pending forever, and then the wait must still end.
MAX_PENDING_S = 1800.0
POLL_S = 5.0  # how often the autoscaler's status is read during a wait
STALE_S = 60.0  # an autoscaler (v1) status older than this is from a monitor that is gone


class StartClock:
    """``timeout_s`` of waiting, not counting time during which the autoscaler has nodes pending (launching or
    starting), up to ``max_pending_s`` of such time. ``pending`` returns how many nodes are pending."""

    def __init__(
        self,
        timeout_s: float,
        pending: Callable[[], int],
        what: str = "",
        max_pending_s: float = MAX_PENDING_S,
        poll_s: float = POLL_S,
        now: Callable[[], float] = time.monotonic,
    ):
        self.timeout_s, self.what, self.max_pending_s, self.poll_s, self.now = (
            timeout_s,
            what,
            max_pending_s,
            poll_s,
            now,
        )
        self.pending = pending
        self.start = self.last = now()
        self.paused = 0.0  # seconds not counted (the autoscaler had nodes pending)
        self.nodes_pending, self._polled, self._said = 0, None, False

    def _tick(self) -> float:
        t = self.now()
        if self.nodes_pending:
            self.paused = min(self.max_pending_s, self.paused + (t - self.last))
        self.last = t
        if self._polled is None or t - self._polled >= self.poll_s:
            self._polled, self.nodes_pending = t, self.pending()
            if self.nodes_pending and not self._said and self.paused < self.max_pending_s:
                self._said = True
                log.warning(
                    "%swaiting for %d node(s) the autoscaler is starting (at most %.0f s more)",
                    f"{self.what}: " if self.what else "",
                    self.nodes_pending,
                    self.max_pending_s,
                )
        return t

    def remaining(self) -> float:
        """Seconds left before the wait gives up (it may grow while nodes are pending)."""
        t = self._tick()
        return max(0.0, self.timeout_s - (t - self.start - self.paused))

    def expired(self) -> bool:
        return self.remaining() <= 0

    def step(self, at_most: float = POLL_S) -> float:
        """A timeout for one wait inside the loop: short enough to read the autoscaler again, never 0."""
        return max(0.1, min(at_most, self.remaining()))


def pending_in_v1_status(status: dict, now: float) -> int:
    """Nodes pending in the v1 autoscaler's status (the JSON its monitor keeps in the GCS for ``ray status``):
    launches requested plus nodes starting. A status left by a monitor that stopped counts nothing."""
    if now - float(status.get("time") or 0) > STALE_S:
        return 0
    report = status.get("autoscaler_report") or {}
    return sum((report.get("pending_launches") or {}).values()) + len(report.get("pending_nodes") or [])


@dataclass
class NodeRoom:
    label: str  # its IP, and its name where that says more
    total: dict[str, float]
    free: dict[str, float]


def _num(x: float) -> str:
    return f"{x:g}"


def lacking_per_node(need: dict[str, float], count: int, nodes: list[NodeRoom], show: int = 8) -> str:
    """``count`` actors each needing ``need``: for every live node, what it has free of each needed resource, and
    what it lacks for even one of them. Nodes that lack least come first; beyond ``show`` they are counted."""
    need = {k: v for k, v in need.items() if v}
    if not nodes:
        return f"{count} x {need} needed; the cluster has no live node"
    rows = []
    for n in nodes:
        parts, short = [], 0
        for k, v in need.items():
            if k not in n.total:
                parts.append(f"no {k}")
                short += 2
                continue
            free = n.free.get(k, 0.0)
            parts.append(f"{k} {_num(free)}/{_num(n.total[k])} free")
            short += free < v
        rows.append((short, n.label, ", ".join(parts)))
    rows.sort(key=lambda r: (r[0], r[1]))
    shown = "; ".join(f"{label}: {text}" for _, label, text in rows[:show])
    more = f"; and {len(rows) - show} more node(s)" if len(rows) > show else ""
    return f"{count} x {{{', '.join(f'{k}: {_num(v)}' for k, v in need.items())}}} needed; per node: {shown}{more}"
