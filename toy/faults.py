"""Faults injected from inside an actor (tests, `python -m benchmarks faults`): ``os.kill(pid)`` from the driver
reaches only processes on the driver's host, while an actor may run on any host of the cluster."""

from __future__ import annotations


def _pid(self) -> int:  # these run inside the actor (``__ray_call__`` passes the actor instance first)
    import os

    return os.getpid()


def _arm(self, after_s: float) -> None:
    import os
    import signal
    import threading

    threading.Timer(after_s, os.kill, (os.getpid(), signal.SIGKILL)).start()


def _arm_on_generation(self, timeout_s: float) -> None:
    import os
    import signal
    import threading
    import time

    def watch():  # polls the engine's own count of requests in flight; vLLM's generate holds no lock it needs
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.llm.llm_engine.get_num_unfinished_requests() > 0:
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.01)

    threading.Thread(target=watch, daemon=True).start()


def _die(self) -> None:
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def _once(actor):
    """The actor's ``__ray_call__`` without retries: an actor with ``max_task_retries`` would otherwise run the
    kill again in its restarted process."""
    return actor.__ray_call__.options(max_task_retries=0)


def kill_actor(actor, after_s: float = 0.0) -> int:
    """SIGKILLs the actor's process from inside it. ``after_s=0``: now, returning once it is dead; otherwise
    ``after_s`` seconds from now, returning at once (arm it before starting the work it should die in). Returns
    the process id that dies."""
    import ray

    pid = ray.get(_once(actor).remote(_pid))
    if after_s > 0:
        ray.get(_once(actor).remote(_arm, after_s))
        return pid
    try:
        ray.get(_once(actor).remote(_die))
    except ray.exceptions.RayActorError:  # the call's process died under it: the kill has landed
        pass
    return pid


def kill_worker_mid_generation(actor, timeout_s: float = 600.0) -> int:
    """Arms a rollout worker to SIGKILL itself once its engine holds requests (its next ``generate``), and returns
    its process id at once. Deterministic where a timer is not: a timer may fire before the batch reaches the worker,
    or after it finished, and the loss is then seen a step later. Gives up after ``timeout_s``."""
    import ray

    pid = ray.get(_once(actor).remote(_pid))
    ray.get(_once(actor).remote(_arm_on_generation, timeout_s))
    return pid


def _children(self) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process().children(recursive=True)]


def child_pids(actor) -> list[int]:
    """The actor's child processes (a rollout worker's vLLM engine)."""
    import ray

    return ray.get(_once(actor).remote(_children))


def wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    """Waits up to ``timeout_s`` for processes of this host to end; returns those still alive (zombies are dead)."""
    import time

    import psutil

    def alive() -> list[int]:
        out = []
        for p in pids:
            try:
                if psutil.Process(p).status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.NoSuchProcess:
                pass
        return out

    deadline = time.monotonic() + timeout_s
    while alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    return alive()


def kill_for_good(actor, timeout_s: float = 30.0) -> None:
    """``ray.kill`` without restarts, returning once a call to the actor fails: ``ray.kill`` itself returns at once,
    and a call made right after it may still be answered by the living actor."""
    import time

    import ray

    ray.kill(actor, no_restart=True)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=timeout_s)
        except ray.exceptions.RayActorError:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the actor still answers {timeout_s:.0f} s after ray.kill")
        time.sleep(0.1)
