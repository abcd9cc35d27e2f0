"""Room on the cluster: start-up waits that let the autoscaler bring nodes up (bounded), and messages that say per
node what the waiting actors lack."""

import time

import pytest

from actors.room import NodeRoom, StartClock, lacking_per_node, pending_in_v1_status


class FakeTime:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _run(clock: StartClock, now: FakeTime, dt: float = 1.0, limit: float = 10_000) -> float:
    """Seconds until the clock expires, ticking every ``dt``."""
    while not clock.expired():
        now.t += dt
        assert now.t < limit
    return now.t


def test_without_pending_nodes_the_wait_is_its_timeout():
    # catches: a clock that never expires (a start-up that hangs) or one that pauses with nothing pending
    now = FakeTime()
    assert _run(StartClock(30, lambda: 0, now=now, poll_s=1), now) == 30


def test_time_while_the_autoscaler_starts_nodes_does_not_count():
    # catches: giving up on a worker whose node the autoscaler is still bringing up (the bug)
    now = FakeTime()
    pending = lambda: 1 if 10 <= now.t < 50 else 0  # noqa: E731 - a node pending from t=10 to t=50
    clock = StartClock(30, pending, now=now, poll_s=1)
    assert _run(clock, now) == 70  # 30 s counted + 40 s paused
    assert clock.paused == 40


def test_a_node_pending_forever_still_ends_the_wait():
    # catches: an unbounded wait for a pod that can never be scheduled (it stays pending)
    now = FakeTime()
    assert _run(StartClock(30, lambda: 2, now=now, poll_s=1, max_pending_s=100), now) == 130


def test_the_autoscaler_is_read_at_most_every_poll():
    # catches: a wait that asks the GCS on every loop turn
    now, calls = FakeTime(), []
    clock = StartClock(60, lambda: calls.append(now.t) or 0, now=now, poll_s=5)
    while not clock.expired():
        now.t += 0.5
    assert len(calls) == 13 and all(b - a >= 5 for a, b in zip(calls, calls[1:]))


def test_the_v1_autoscaler_status_counts_launches_and_starting_nodes():
    # the JSON the v1 monitor keeps for `ray status` (its AutoscalerSummary as a dict)
    status = {
        "time": 1000.0,
        "autoscaler_report": {
            "active_nodes": {"head": 1},
            "idle_nodes": {},
            "pending_nodes": [["10.0.0.7", "rollout", "setting-up"]],
            "pending_launches": {"rollout": 2, "reward": 1},
            "failed_nodes": [],
        },
    }
    assert pending_in_v1_status(status, now=1010) == 4
    # catches: trusting a status its monitor stopped updating (a wait paused by a dead autoscaler)
    assert pending_in_v1_status(status, now=1100) == 0
    assert pending_in_v1_status({"time": 1000.0}, now=1001) == 0  # a status without an autoscaler report


def test_the_message_says_what_each_node_lacks():
    nodes = [
        NodeRoom("10.0.0.2", {"CPU": 4}, {"CPU": 4}),
        NodeRoom("10.0.0.1 (roll0)", {"CPU": 2, "rollout": 1}, {"CPU": 1}),
        NodeRoom("10.0.0.3", {"CPU": 4, "rollout": 2}, {"CPU": 0.5, "rollout": 2}),
    ]
    text = lacking_per_node({"CPU": 1, "rollout": 1, "GPU": 0}, 2, nodes)
    # catches: the old sum over all nodes (CPU 5.5 free, rollout 2 free: it looked as if there were room)
    assert text.startswith("2 x {CPU: 1, rollout: 1} needed; per node: ")
    assert "10.0.0.2: CPU 4/4 free, no rollout" in text
    assert "10.0.0.1 (roll0): CPU 1/2 free, rollout 0/1 free" in text
    assert "10.0.0.3: CPU 0.5/4 free, rollout 2/2 free" in text
    assert "GPU" not in text  # a resource not asked for is not listed
    # nodes short of one resource come before nodes without it at all; a big cluster is cut short
    assert text.index("10.0.0.1") < text.index("10.0.0.2")
    many = [NodeRoom(f"10.1.0.{i}", {"CPU": 1}, {"CPU": 0}) for i in range(20)]
    assert lacking_per_node({"CPU": 1}, 1, many, show=3).endswith("and 17 more node(s)")
    assert "no live node" in lacking_per_node({"CPU": 1}, 1, [])


def test_a_fixed_cluster_has_no_pending_nodes_and_its_node_is_listed(ray_cluster):
    from actors.cluster_view import autoscaler_pending, live_nodes

    assert autoscaler_pending() == 0  # no autoscaler: the wait runs on its own clock
    (node,) = live_nodes()
    assert node.total["CPU"] == 8 and 0 <= node.free["CPU"] <= 8


def test_learner_and_reward_pool_name_what_each_node_lacks(ray_cluster, test_config):
    # catches: a start-up that waits forever, or an error that sums resources over the cluster
    import ray

    from actors.reward_pool import RewardPool
    from cluster.learner_group import LearnerGroup

    live = lambda: {k for k, p in ray.util.placement_group_table().items() if p["state"] != "REMOVED"}  # noqa: E731
    before = live()
    cfg = test_config.model_copy(deep=True)
    cfg.learner.num_cpus = 1000
    t0 = time.monotonic()
    with pytest.raises(
        RuntimeError,
        match=r"no room for the learner within 1 s: 1 x \{CPU: 1000\} needed; per node: "
        r"[0-9.]+: CPU [0-9.]+/8 free",
    ):
        LearnerGroup(cfg, "unused", timeout_s=1)
    cfg.reward.num_cpus, cfg.reward.num_workers = 1000, 2
    with pytest.raises(RuntimeError, match=r"2 of 2 reward worker\(s\) did not start within 1 s: 2 x \{CPU: 1000\}"):
        RewardPool(cfg, tokenizer_path="unused", start_timeout_s=1)
    assert time.monotonic() - t0 < 30
    assert live() == before  # nothing left behind
