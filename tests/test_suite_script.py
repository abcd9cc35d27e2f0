"""scripts/test.sh, the suite's runner (`make test`, CI): the tests marked `alone` first in one process, then the
others on pytest-xdist workers; its exit status is the suite's verdict, so it is tested on a stand-in suite of two
tests (seconds)."""

import os
import subprocess

from tests.conftest import ROOT

SUITE = """
import pytest


@pytest.mark.alone
def test_alone():
    assert os.environ.get("ALONE_OK"), "the alone test failed"


def test_other():
    assert not os.environ.get("OTHER_FAILS"), "the other test failed"
"""


def run_suite(tmp_path, *args, **env):
    (tmp_path / "test_stand_in.py").write_text("import os\n" + SUITE)
    return subprocess.run(
        ["bash", "scripts/test.sh", str(tmp_path / "test_stand_in.py"), "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "VIDEOP2R_TEST_WORKERS": "2", **env},
    )


def test_the_phases_verdict(tmp_path):
    """Catches: a failure in the first phase hidden by the second's pass (the script's status is its last
    command's), the first phase's failures lost above the second's output (CI keeps the end of the log), a phase
    that selects nothing counted as a failure (pytest's 5), and the script not running at all (a bash syntax
    error is exit 2 after both phases ran)."""
    r = run_suite(tmp_path, ALONE_OK="1")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "phase 1 (alone): exit 0" in r.stdout and "phase 2 (2 workers): exit 0" in r.stdout
    assert "2 workers [1 item]" in r.stdout  # phase 2 on the workers, without the alone test

    r = run_suite(tmp_path)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    tail = r.stdout[r.stdout.index("== phase 1 (alone): exit 1") :]
    assert "phase 2 (2 workers): exit 0" in tail and "FAILED" in tail and "test_alone" in tail, tail

    r = run_suite(tmp_path, "-k", "other", OTHER_FAILS="1")
    assert r.returncode == 1 and "phase 1 (alone): exit 5" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]

    r = run_suite(tmp_path, "-k", "other")  # phase 1 selects nothing: no failure
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    r = run_suite(tmp_path, "-k", "no_such_test")  # nothing at all: pytest's own "no tests ran"
    assert r.returncode == 5, r.stdout[-2000:] + r.stderr[-2000:]
    r = run_suite(tmp_path, "--no-such-option")  # a usage error (or Ctrl-C) ends it: no second phase
    assert r.returncode == 4 and "phase 2" not in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]


def test_one_process_on_request(tmp_path):
    """VIDEOP2R_TEST_WORKERS=0: every test in one pytest process, no phases. Catches the setting ignored."""
    r = run_suite(tmp_path, ALONE_OK="1", VIDEOP2R_TEST_WORKERS="0")
    assert r.returncode == 0 and "2 passed" in r.stdout and "phase" not in r.stdout, r.stdout[-2000:]
