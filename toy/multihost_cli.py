"""`scripts/multihost.sh up|down|status|run`: the harness's hosts (toy/hosts.py) by hand."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from toy.hosts import Cluster
from toy.hosts import __doc__ as HOSTS_DOC


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/multihost.sh", description=HOSTS_DOC.split("\n\n")[0])
    p.add_argument("action", choices=["up", "down", "run", "status"], help="run: a command on one host (after --)")
    p.add_argument(
        "--state",
        default=os.environ.get("VIDEOP2R_HOSTS_DIR", "/var/tmp/videop2r-hosts"),
        help="the harness's folder: hosts.json and shared/ (outside /tmp, which each host has its own)",
    )
    p.add_argument("--subnet", default="10.87.0", help="the first three octets of the hosts' /24 (default 10.87.0)")
    p.add_argument("--host", default="head", help="run: the host to run on")
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)
    a = p.parse_args(argv[:cut])
    a.argv = argv[cut + 1 :]
    c = Cluster(a.state, subnet=a.subnet)
    try:
        if a.action == "up":
            c.up()
            c.start_ray()
            print(f"hosts up: {', '.join(f'{h.name}={h.ip}' for h in c.hosts)}; shared folder {c.shared}")
            print(f"RAY_ADDRESS={c.dashboard}  (run a command on a host: {p.prog} run --host head -- CMD)")
        elif a.action == "down":
            ended = c.down()
            print(f"hosts down ({', '.join(ended) or 'none were running'})")
        elif a.action == "status":
            print(
                "\n".join(f"{h.name} {h.ip} pid={h.pid} {h.resources}" for h in c.hosts)
                if c.file.exists()
                else "no hosts"
            )
        else:
            if not a.argv:
                p.error("run needs a command after --")
            return subprocess.run(c.command(a.host, a.argv, c.ray_env())).returncode
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
