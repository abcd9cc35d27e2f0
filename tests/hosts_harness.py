"""The multi-host harness as the tests use it: the hosts of toy/hosts.py brought up once per test session,
the inputs on its shared volume, and jobs submitted with deploy/submit.sh on the head host. Needs root; in CI a
missing capability fails the test with its reason, elsewhere it skips with it."""

import getpass
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from toy.hosts import Cluster
from toy.netns import free_subnet


def unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the multi-host harness needs root (network, mount and PID namespaces)"
    for tool in ("ip", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"the multi-host harness needs `{tool}`"
    probe = f"vp{secrets.token_hex(3)}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@pytest.fixture(scope="module")
def hosts():
    reason = unavailable()
    if reason:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(reason)
    # outside /tmp: every host has a /tmp of its own, and this folder holds the cluster's shared volume
    state = Path(tempfile.mkdtemp(prefix="videop2r-hosts-", dir="/var/tmp"))
    cluster = Cluster(state, prefix=f"vp{secrets.token_hex(2)}", subnet=free_subnet())
    # the hosts' kernel cache (Cluster.ray_env) starts from this session's: the same engine's kernels, compiled once
    warm = Path(tempfile.gettempdir()) / f"torchinductor_{getpass.getuser()}"
    try:
        shutil.copytree(warm, state / "inductor-cache", dirs_exist_ok=True)
    except OSError:  # none yet, or a file of it written meanwhile: compiled again where missing
        pass
    try:
        cluster.up()
        cluster.start_ray()
        yield cluster
    finally:
        cluster.down()
        shutil.rmtree(state, ignore_errors=True)


SECRET = "sekrit-" + secrets.token_hex(4)


def submit(c: Cluster, *args, env=None, wait=True, timeout=600) -> subprocess.CompletedProcess:
    extra = {"RAY_ADDRESS": c.dashboard, "VIDEOP2R_JUDGE_API_KEY": SECRET, **(env or {})}
    secrets = c.shared / "secrets"  # the secret reaches the job in a private file there, not in its runtime env
    secrets.mkdir(mode=0o700, exist_ok=True)
    cmd = ["deploy/submit.sh", "--out-root", str(c.shared / "runs"), "--secrets-dir", str(secrets)]
    cmd += [*([] if wait else ["--no-wait"]), "--", *args]
    return c.run("head", cmd, {**c.ray_env(), **extra}, timeout=timeout, check=False)


def placement(c: Cluster) -> dict[str, list[str]]:
    """Live actors per class, as the hostnames of the nodes they run on (Ray's state API, asked on the head)."""
    code = """
import json, collections
from ray.util.state import list_actors, list_nodes
nodes = {n.node_id: n.node_name for n in list_nodes(address=ADDR)}
out = collections.defaultdict(list)
for a in list_actors(address=ADDR, filters=[("state", "=", "ALIVE")], detail=True, limit=1000):
    out[a.class_name].append(nodes.get(a.node_id, "?"))
print(json.dumps(out))
""".replace("ADDR", repr(c.dashboard))
    r = c.run("head", ["python", "-c", code], c.ray_env(), timeout=60)
    ips = {h.ip: h.name for h in c.hosts}
    return {k: sorted(ips.get(v, v) for v in vs) for k, vs in json.loads(r.stdout.strip().splitlines()[-1]).items()}


@pytest.fixture(scope="module")
def shared(hosts, tiny_model_dir, sft_model):
    """The cluster's shared volume with the inputs: the tiny model for SFT, and the session's SFT model, which knows
    the format, so that train's observations reach the judge from step 1 (the hosts do not see this process's
    /tmp); four prompts: the second epoch starts at step 3 and meets step 1's observations in the verdict cache."""
    from toy.synthetic import make_synthetic

    shutil.copytree(tiny_model_dir, hosts.shared / "tiny-model")
    shutil.copytree(sft_model, hosts.shared / "sft-model")
    make_synthetic(hosts.shared / "few", n=4, seed=1, n_eval=2, frames=8, size=56, style="demo", progress=False)
    return hosts.shared


PINS = [
    "learner.num_ranks=2",
    "learner.num_cpus=1",
    "learner.resources.learner=1",
    "rollout.num_cpus=1",
    "rollout.resources.rollout=1",
    "reward.resources.reward=1",
    "cache.allow_insecure=true",
]  # the demo config's start_local Redis, in clear between the harness's hosts


def placement_group_states(c: Cluster) -> list[str]:
    """The state of every placement group of the cluster (Ray's state API, asked on the head)."""
    code = (
        "import json; from ray.util.state import list_placement_groups; "
        f"print(json.dumps([g.state for g in list_placement_groups(address={c.dashboard!r}, limit=1000)]))"
    )
    r = c.run("head", ["python", "-c", code], c.ray_env(), timeout=60)
    return json.loads(r.stdout.strip().splitlines()[-1])


def job_id(r: subprocess.CompletedProcess) -> str:
    found = re.search(r"raysubmit_[A-Za-z0-9]+", r.stdout + r.stderr)
    assert found, (r.stdout + r.stderr)[-3000:]
    return found.group(0)


def job_logs(c: Cluster, job: str) -> str:
    r = c.run("head", ["ray", "job", "logs", "--address", c.dashboard, job], c.ray_env(), timeout=60, check=False)
    return r.stdout + r.stderr


def job_status(c: Cluster, job: str) -> str:
    code = (
        "import sys; from ray.job_submission import JobSubmissionClient; "
        "print(JobSubmissionClient(sys.argv[1]).get_job_status(sys.argv[2]).value)"
    )
    try:
        return c.run("head", ["python", "-c", code, c.dashboard, job], c.ray_env(), timeout=60).stdout.strip()
    except subprocess.TimeoutExpired:  # asked again by the caller, whose wait is bounded (seen once in CI, when
        return "UNKNOWN"  # the machine ran 2-3x slower: the client printed RUNNING, then did not exit in 60 s)


def _procs(c: Cluster):
    """(pid folder, host name or None for a process of no host) for every live process of this machine."""
    hosts = {os.readlink(f"/proc/{h.pid}/ns/net"): h.name for h in c.hosts if h.pid}
    for p in sorted(Path("/proc").iterdir(), key=lambda q: q.name):
        if p.name.isdigit():
            try:
                yield p, hosts.get(os.readlink(p / "ns" / "net"))
            except OSError:  # gone meanwhile
                continue


def cpu_by_process(c: Cluster) -> dict[int, tuple[str, str, float]]:
    """(host, command name, CPU seconds used so far) of every live process of this machine; the host is "outside"
    for the machine's other processes (the rest of a test session). For a failure's report: on 2 shared cores,
    which host and which process took the time while a step was slow (``cpu_used``)."""
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for p, host in _procs(c):
        try:
            comm, rest = (p / "stat").read_text().split(" (", 1)[1].rsplit(")", 1)
        except (OSError, IndexError):
            continue
        fields = rest.split()
        out[int(p.name)] = (host or "outside", comm, (int(fields[11]) + int(fields[12])) / tick)  # utime + stime
    return out


def cpu_used(before: dict, after: dict, top: int = 3) -> str:
    """CPU seconds each host's processes used between two ``cpu_by_process`` snapshots (processes that ended
    meanwhile are left out), and the busiest processes."""
    delta = {pid: (host, comm, s - before.get(pid, (host, comm, 0.0))[2]) for pid, (host, comm, s) in after.items()}
    hosts: dict[str, float] = {}
    for host, _, s in delta.values():
        hosts[host] = hosts.get(host, 0.0) + s
    busiest = sorted(delta.items(), key=lambda kv: -kv[1][2])[:top]
    return (
        ", ".join(f"{h} {s:.1f}" for h, s in hosts.items())
        + "; busiest: "
        + ", ".join(f"{comm} {pid} on {host} {s:.1f}" for pid, (host, comm, s) in busiest)
    )


def stacks(c: Cluster, names=("RolloutWorker", "VLLM::", "LearnerRank", "RewardScorer", "commands.cli")) -> str:
    """What the named processes on every host are doing (py-spy), for a test's failure message: a step that never
    comes is otherwise only a timeout."""
    spy = Path(os.environ.get("VIRTUAL_ENV", Path(sys.executable).parent.parent)) / "bin" / "py-spy"
    out = []
    for p, host in _procs(c):
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if host is None or not any(n in cmd for n in names):
            continue
        dump = subprocess.run([str(spy), "dump", "--pid", p.name], capture_output=True, text=True, timeout=60)
        out.append(f"--- {host} pid {p.name} ({stat}) {cmd[:100]}\n{(dump.stdout + dump.stderr)[-3000:]}")
    return "\n".join(out)
