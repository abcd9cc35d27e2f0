"""The learner's DeepSpeed world as the learner makes it (``learner.deepspeed_setup.init_distributed``)."""

from tests.conftest import ROOT


def test_the_learner_worlds_store_listens_on_its_address_only():
    """The DeepSpeed world's TCPStore (rank 0's) is served on MASTER_ADDR only: torch's env:// rendezvous listened
    on every interface (measured: '::'), where any host on the network could reach it. Run in a fresh process
    (this one may hold a world already)."""
    import subprocess
    import sys

    code = """
import os, socket, psutil
from cluster.services import free_port
port = free_port()
os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
from learner.deepspeed_setup import init_distributed
init_distributed("gloo")
import torch, torch.distributed as dist
t = torch.ones(1); dist.all_reduce(t)
print("ON", sorted({c.laddr.ip for c in psutil.Process().net_connections("tcp")
                    if c.status == psutil.CONN_LISTEN and c.laddr.port == port}), dist.get_world_size())
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ON ['127.0.0.1'] 1" in r.stdout, r.stdout + r.stderr[-2000:]


def test_a_lone_process_world_binds_a_port_the_kernel_picks():
    """A learner outside any launcher (the benchmarks, `videop2r` on one host without Ray ranks) makes a world of one
    whose store binds port 0 and writes the port it got into MASTER_PORT. It used to probe a free port and bind it
    later: another process took it in between (EADDRINUSE, seen with two test sessions side by side). Catches the
    port not written back (MASTER_PORT left at 0) or the store listening beyond loopback."""
    import subprocess
    import sys

    code = """
import os, psutil
for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    os.environ.pop(k, None)
from learner.deepspeed_setup import init_distributed
init_distributed("gloo")
port = int(os.environ["MASTER_PORT"])
print("ON", port > 0, sorted({c.laddr.ip for c in psutil.Process().net_connections("tcp")
                              if c.status == psutil.CONN_LISTEN and c.laddr.port == port}))
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ON True ['127.0.0.1']" in r.stdout, r.stdout + r.stderr[-2000:]


def test_rank_zeros_store_port_is_held_from_its_reservation_to_the_world():
    """The learner group asks rank 0 for the world's address before any rank joins; the port is held, listening,
    from then until the store serves on it. Catches the port only probed free (another process on a busy node takes
    it before the store binds: EADDRINUSE, the world never forms) and a reservation the store does not use (its own
    bind of the held port fails)."""
    import subprocess
    import sys

    code = """
import errno, os, socket, psutil
from learner.deepspeed_setup import init_distributed, reserve_store_port
port = reserve_store_port("127.0.0.1")
other = socket.socket()
other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    other.bind(("127.0.0.1", port)); other.listen(); print("TAKEN BY ANOTHER")
except OSError as e:
    print("HELD", e.errno == errno.EADDRINUSE)
os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
init_distributed("gloo")
import torch, torch.distributed as dist
t = torch.ones(1); dist.all_reduce(t)
print("ON", len([c for c in psutil.Process().net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port]))
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "HELD True" in r.stdout and "ON 1" in r.stdout, r.stdout + r.stderr[-2000:]
