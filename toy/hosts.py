"""Several hosts on one machine, for rehearsing a multi-host run (tests, `python -m benchmarks multihost`, a person
at the keyboard through scripts/multihost.sh). Needs root and Linux namespaces.

Each host is a network namespace on one bridge (its own veth, IP, loopback and hosts file) plus a mount, UTS and
PID namespace kept alive by a small init (PID 1 there, reaping orphans): its own hostname, its own tmpfs /tmp, /dev/shm and
``runs/`` of this repository. The learner hosts' hosts files map their names to 127.0.1.1, as Debian does, so
anything that takes its address from the hostname advertises loopback there. The repository, its .venv and
``<state>/shared`` (the cluster's shared volume) are the same files everywhere.

Only what this harness made is removed: killing a host's PID 1 ends every process of its PID namespace (Ray's
daemons included), then its namespace, links and hosts file go by exact name. The names and PIDs are in
``<state>/hosts.json``, so ``down`` also cleans up after a killed run.

Host faults: ``cut(name)`` cuts a host off (and stops its processes, which here share the machine's cores),
``kill_raylet(name)`` kills its raylet alone, ``crash(name)`` ends all its processes at once, ``reboot(name)``
brings it back with fresh disks and joins its Ray node again."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from toy.netns import _is_pid_one_of, _kill, _netns_pids, _pid_one, sh

ROOT = Path(__file__).resolve().parent.parent
RAY_PORT, DASHBOARD_PORT = 6380, 8265


# PID 1 of each host reaps orphans, as a machine's init does: a dead raylet left as a zombie would look alive to
# its workers (they poll the raylet's PID), which then never exit
INIT_NAME = "videop2r-host-init"
INIT = "import os, time\nwhile True:\n    try:\n        os.wait()\n    except ChildProcessError:\n        time.sleep(1)"
# Node death is detected by the head's health checks; Ray's defaults (a check every 3 s, 5 misses) take 15-30 s.
# The harness checks every second and gives up after 4 misses of 2 s, so that host faults fit a short test while
# a node starved for a moment on 2 busy cores is not declared dead.
HEALTH_CHECKS = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "2000",
    "RAY_health_check_failure_threshold": "4",
}


@dataclass
class Host:
    name: str  # the hostname; the namespace is <prefix>-<name>
    ip: str
    resources: dict = field(default_factory=dict)
    num_cpus: int = 2
    debian: bool = False  # the hostname maps to 127.0.1.1 in this host's hosts file
    pid: int = 0  # the host's PID 1, as the machine sees it


def default_hosts(subnet: str) -> list[Host]:
    """The head (Ray head, the job's driver, Redis, the judge), two learner hosts (one rank each), a rollout host, a
    reward host, a spare rollout host that `videop2r scale` fills, and a second reward host (where a cut-off reward
    host's chunk is scored again)."""
    ip = lambda i: f"{subnet}.{10 + i}"  # noqa: E731
    return [
        Host("head", ip(0), {}, 1),
        Host("learn0", ip(1), {"learner": 1}, 2, debian=True),
        Host("learn1", ip(2), {"learner": 1}, 2, debian=True),
        Host("roll0", ip(3), {"rollout": 1}, 2),
        Host("reward0", ip(4), {"reward": 1}, 1, debian=True),
        Host("roll1", ip(5), {"rollout": 1}, 2),
        Host("reward1", ip(6), {"reward": 1}, 1),
    ]


class Cluster:
    """The hosts of one harness, described by ``<state>/hosts.json``."""

    def __init__(self, state: str | Path, prefix: str = "vp2r", subnet: str = "10.87.0"):
        self.state = Path(state).absolute()
        self.file = self.state / "hosts.json"
        if self.file.exists():
            saved = json.loads(self.file.read_text())
            prefix, subnet = saved["prefix"], saved["subnet"]
            self.hosts = [Host(**h) for h in saved["hosts"]]
        else:
            self.hosts = default_hosts(subnet)
        self.prefix, self.subnet = prefix, subnet
        self.bridge = f"{prefix}br"
        self.shared = self.state / "shared"

    # -- names -------------------------------------------------------------------------------------------------------
    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def netns(self, h: Host) -> str:
        return f"{self.prefix}-{h.name}"

    def veth(self, h: Host) -> str:  # the machine's end of the host's link (the host's end is its eth0)
        return f"{self.prefix}{self.hosts.index(h)}"

    @property
    def head(self) -> Host:
        return self.hosts[0]

    @property
    def ray_address(self) -> str:
        return f"{self.head.ip}:{RAY_PORT}"

    @property
    def dashboard(self) -> str:
        return f"http://{self.head.ip}:{DASHBOARD_PORT}"

    def _save(self) -> None:
        self.file.write_text(
            json.dumps(
                {"prefix": self.prefix, "subnet": self.subnet, "hosts": [asdict(h) for h in self.hosts]}, indent=1
            )
        )

    # -- up / down ---------------------------------------------------------------------------------------------------
    def up(self) -> None:
        if os.geteuid() != 0:
            raise PermissionError("the multi-host harness needs root (network, mount and PID namespaces)")
        for tool in ("ip", "unshare", "nsenter"):
            if shutil.which(tool) is None:
                raise FileNotFoundError(f"the multi-host harness needs `{tool}` (iproute2 / util-linux)")
        if self.file.exists():
            raise FileExistsError(f"{self.file} exists: hosts are up (or were killed); run `down` first")
        taken = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
        if f" {self.subnet}." in taken:
            raise RuntimeError(f"{self.subnet}.0/24 is already in use on this machine: pick another subnet")
        self.state.mkdir(parents=True, exist_ok=True)
        self.shared.mkdir(exist_ok=True)
        self._save()  # first, so that `down` finds whatever a failure below leaves
        sh(["ip", "link", "add", self.bridge, "type", "bridge"])
        sh(["ip", "addr", "add", f"{self.subnet}.1/24", "dev", self.bridge])
        sh(["ip", "link", "set", self.bridge, "up"])
        for h in self.hosts:
            self._add_host(h)
            self._save()

    def _add_host(self, h: Host) -> None:
        ns, veth = self.netns(h), self.veth(h)
        etc = Path("/etc/netns") / ns
        etc.mkdir(parents=True, exist_ok=True)
        mine = "127.0.1.1" if h.debian else h.ip
        others = "".join(f"{o.ip} {o.name}\n" for o in self.hosts if o is not h)
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n{mine} {h.name}\n{others}")
        # no name server reachable from a host: a lookup of a name or address not in its hosts file (c10d looks up
        # every peer's) fails at once on its own loopback instead of timing out on the machine's resolver
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        sh(["ip", "netns", "add", ns])
        sh(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        sh(["ip", "link", "set", veth, "master", self.bridge, "up"])
        inside = ["ip", "netns", "exec", ns]
        sh(inside + ["ip", "addr", "add", f"{h.ip}/24", "dev", "eth0"])
        sh(inside + ["ip", "link", "set", "eth0", "up"])
        sh(inside + ["ip", "link", "set", "lo", "up"])
        sh(inside + ["ip", "route", "add", "default", "via", f"{self.subnet}.1"])
        self._boot(h)

    def _boot(self, h: Host) -> None:
        """The host's mount, UTS and PID namespaces inside its network namespace, kept by an init that is PID 1."""
        (ROOT / "runs").mkdir(exist_ok=True)
        setup = (
            f"mount -t tmpfs -o mode=1777 tmpfs /tmp && mount -t tmpfs tmpfs /dev/shm && "
            f"mount -t tmpfs tmpfs {ROOT / 'runs'} && hostname {h.name} && "
            f"exec {sys.executable} -c '{INIT}' {INIT_NAME}"
        )
        keeper = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.netns(h),
                "unshare",
                "--mount",
                "--uts",
                "--pid",
                "--fork",
                "--mount-proc",
                "sh",
                "-c",
                setup,
            ],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        h.pid, deadline = 0, time.monotonic() + 10
        while not h.pid:
            h.pid = _pid_one(keeper.pid)
            if keeper.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"host {h.name} did not start (unshare exited {keeper.poll()})")
            time.sleep(0.05)
        # its mounts are in place once it is the init (before, it is the `sh -c` whose script names the init too)
        while Path(f"/proc/{h.pid}/cmdline").read_bytes().split(b"\0")[0] == b"sh":
            if time.monotonic() > deadline:
                raise RuntimeError(f"host {h.name} did not start (its setup did not finish)")
            time.sleep(0.05)

    def down(self) -> list[str]:
        """Ends every process of the hosts and removes their namespaces, links and hosts files."""
        done = []
        for h in self.hosts:
            if h.pid and _is_pid_one_of(h.pid, self.netns(h)):
                os.kill(h.pid, signal.SIGKILL)  # the kernel then kills every process of its PID namespace
                done.append(h.name)
        for h in self.hosts:
            for pid in _netns_pids(self.netns(h)):  # anything that entered only its network namespace
                _kill(pid)
            subprocess.run(["ip", "netns", "del", self.netns(h)], capture_output=True)
            subprocess.run(["ip", "link", "del", self.veth(h)], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / self.netns(h), ignore_errors=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        self.file.unlink(missing_ok=True)
        return done

    # -- running things on a host ------------------------------------------------------------------------------------
    def command(self, host: str | Host, argv: list[str], env: dict | None = None) -> list[str]:
        """``argv`` as it runs on ``host`` (its namespaces, the repository as working directory, ``env`` added)."""
        h = host if isinstance(host, Host) else self.host(host)
        extra = [f"{k}={v}" for k, v in (env or {}).items()]
        return ["nsenter", "-t", str(h.pid), "-m", "-u", "-n", "-p", f"--wd={ROOT}", "--", "env", *extra, *argv]

    def run(self, host, argv, env=None, timeout=120, check=True) -> subprocess.CompletedProcess:
        r = subprocess.run(self.command(host, argv, env), capture_output=True, text=True, timeout=timeout)
        if check and r.returncode:
            raise RuntimeError(f"on {host}: {' '.join(argv)} exited {r.returncode}: {(r.stdout + r.stderr)[-2000:]}")
        return r

    def python_on(self, host: str | Host) -> str:
        """A Python interpreter on ``host``'s network (its address, loopback, hosts file and resolver; the machine's
        disks and /dev/shm): a script under the harness's folder that ``multiprocessing`` can spawn a process with,
        its pipes and semaphores still shared with the parent."""
        h = host if isinstance(host, Host) else self.host(host)
        path = self.state / "bin" / f"python-{h.name}"
        path.parent.mkdir(exist_ok=True)
        path.write_text(f'#!/bin/sh\nexec ip netns exec {self.netns(h)} {sys.executable} "$@"\n')
        path.chmod(0o755)
        return str(path)

    def popen(self, host, argv, env=None, **kw) -> subprocess.Popen:
        return subprocess.Popen(self.command(host, argv, env), **kw)

    def ray_env(self) -> dict:
        venv = Path(sys.executable).parent
        return {
            "PATH": f"{venv}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "RAY_AUTH_MODE": "token",
            # a stopped job gets SIGTERM, and SIGKILL only after this (time to write its checkpoint)
            "RAY_JOB_STOP_WAIT_TIME_S": "60",
            # a dead rollout worker's vLLM engine processes die with it (as on every node of a real cluster)
            "RAY_process_group_cleanup_enabled": "true",
            # torch's compiled CPU kernels in one cache for all hosts, outside their own /tmp: vLLM's CPU engine
            # compiles them (~25 s of the 2 cores) in every fresh /tmp, i.e. at every worker start on a host
            "TORCHINDUCTOR_CACHE_DIR": str(self.state / "inductor-cache"),
            **HEALTH_CHECKS,
        }

    def start_ray(self, object_store_mb: int = 150) -> None:
        """A Ray head on the first host, every other host joined to it with its role's resources."""
        common = ["--disable-usage-stats", f"--object-store-memory={object_store_mb * 2**20}"]
        h = self.head
        self.run(
            h,
            [
                "ray",
                "start",
                "--head",
                f"--node-ip-address={h.ip}",
                f"--port={RAY_PORT}",
                "--dashboard-host=0.0.0.0",
                f"--dashboard-port={DASHBOARD_PORT}",
                f"--num-cpus={h.num_cpus}",
                *common,
            ],
            self.ray_env(),
            timeout=120,
        )
        joins = [
            self.popen(
                w,
                [
                    "ray",
                    "start",
                    f"--address={self.ray_address}",
                    f"--node-ip-address={w.ip}",
                    f"--num-cpus={w.num_cpus}",
                    f"--resources={json.dumps(w.resources)}",
                    *common,
                ],
                self.ray_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for w in self.hosts[1:]
        ]
        for w, p in zip(self.hosts[1:], joins):
            out, _ = p.communicate(timeout=180)
            if p.returncode:
                raise RuntimeError(f"{w.name} could not join the Ray head: {out[-2000:]}")

    def join(self, name: str, object_store_mb: int = 150) -> None:
        """Joins (or re-joins) one host's Ray node to the head."""
        w = self.host(name)
        self.run(
            w,
            [
                "ray",
                "start",
                f"--address={self.ray_address}",
                f"--node-ip-address={w.ip}",
                f"--num-cpus={w.num_cpus}",
                f"--resources={json.dumps(w.resources)}",
                "--disable-usage-stats",
                f"--object-store-memory={object_store_mb * 2**20}",
            ],
            self.ray_env(),
            timeout=180,
        )

    def link(self, name: str, up: bool) -> None:
        """Cuts a host off the network (or plugs it back in)."""
        sh(["ip", "link", "set", self.veth(self.host(name)), "up" if up else "down"])

    def cut(self, name: str) -> None:
        """The host cut off the network for good (until ``reboot``): its link goes down and its processes stop
        (SIGSTOP). Seen from the other hosts that is a cut alone; stopping them is what makes it one here, where
        all hosts share the machine's cores: a cut-off host's processes would go on taking CPU from the others
        (on a real cluster, that host's own CPUs)."""
        self.link(name, False)
        stopped: set[int] = set()
        while True:  # until no process of the host is left running (one may fork while the others stop)
            new = [pid for pid in _netns_pids(self.netns(self.host(name))) if pid not in stopped]
            if not new:
                return
            for pid in new:
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:
                    pass
                stopped.add(pid)

    def crash(self, name: str) -> None:
        """The host goes down at once, as at a power cut: every process on it ends (SIGKILL), nothing is told."""
        h = self.host(name)
        if h.pid and _is_pid_one_of(h.pid, self.netns(h)):
            os.kill(h.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _netns_pids(self.netns(h)) and time.monotonic() < deadline:
            time.sleep(0.1)
        h.pid = 0
        self._save()

    def kill_raylet(self, name: str) -> None:
        """SIGKILLs the host's raylet alone (Ray's node death; the host and its other processes stay)."""
        for pid in _netns_pids(self.netns(self.host(name))):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "raylet":
                    _kill(pid)
            except OSError:
                pass

    def reboot(self, name: str) -> None:
        """The host back after a crash (or a cut): fresh /tmp, /dev/shm and processes, and its Ray node joined
        again, as a restarted KubeRay pod or a node's systemd unit does."""
        h = self.host(name)
        if h.pid:
            self.crash(name)
        sh(["ip", "link", "set", self.veth(h), "up"])
        self._boot(h)
        self._save()
        try:
            self.join(name)
        except RuntimeError:
            # a pod whose start failed is restarted once more, fresh. Seen once in three suite runs (2026-11-27):
            # `ray start` on the rebooted host stopped at the head's object-spilling folder ("The fallback directory
            # ... does not exist"); the same test passed on its rerun. A join that fails twice still fails the run.
            self.crash(name)
            self._boot(h)
            self._save()
            self.join(name)
