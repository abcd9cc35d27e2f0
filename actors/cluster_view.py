"""What Ray says about room on the cluster: nodes the autoscaler is bringing up, and each live node's free and total
resources; with ``actors/room.py`` they make start-up waits that let the autoscaler work and messages per node."""

from __future__ import annotations

import json
import logging
import time

from actors.room import NodeRoom, StartClock, lacking_per_node, pending_in_v1_status

log = logging.getLogger(__name__)


def start_clock(timeout_s: float, what: str) -> StartClock:
    """The clock of a start-up wait of ``timeout_s`` that stops while the autoscaler has nodes pending."""
    return StartClock(timeout_s, autoscaler_pending, what)


def lacking(need: dict[str, float], count: int) -> str:
    """What each live node lacks for ``count`` actors of ``need`` (for a wait that gave up)."""
    try:
        return lacking_per_node(need, count, live_nodes())
    except Exception as e:  # noqa: BLE001 - the message must not fail the error it explains
        return f"{count} x {need} needed (the nodes' resources could not be read: {type(e).__name__})"


def autoscaler_pending() -> int:
    """Nodes the cluster's autoscaler is launching or starting; 0 without an autoscaler (a fixed cluster) or when its
    status cannot be read (the wait then runs on its own clock)."""
    import ray

    try:
        from ray.autoscaler.v2.utils import is_autoscaler_v2

        if is_autoscaler_v2(fetch_from_server=True):
            from ray.autoscaler.v2.sdk import get_cluster_status

            st = get_cluster_status(ray.get_runtime_context().gcs_address)
            return sum(r.count for r in st.pending_launches) + len(st.pending_nodes)
        from ray._private import ray_constants
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        return pending_in_v1_status(json.loads(raw), time.time()) if raw else 0
    except Exception as e:  # noqa: BLE001 - a status we cannot read must not fail a start-up wait
        log.debug("autoscaler status unavailable: %s", e)
        return 0


def live_nodes() -> list[NodeRoom]:
    """The live nodes with their total and free resources (Ray's view, which may be a moment old)."""
    import ray
    from ray._private.state import available_resources_per_node

    free = available_resources_per_node()
    out = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        ip, name = n.get("NodeManagerAddress", "?"), n.get("NodeName", "")
        out.append(
            NodeRoom(
                ip if name in ("", ip) else f"{ip} ({name})",
                dict(n.get("Resources") or {}),
                dict(free.get(n["NodeID"], {})),
            )
        )
    return out
