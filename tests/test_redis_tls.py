"""The verdict cache and the control plane through a Redis with TLS (``rediss://``), as a cluster whose Redis sits on
another host must use: a real redis-server (Debian's build has TLS) with a certificate made for the test.

The CA a client checks the server against travels in the URL (``?ssl_ca_certs=/path/ca.crt``, read by redis-py), so
it reaches every reward actor with ``cache.url`` (the file must be at that path on every host, as the docs say)."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from cluster.services import free_port

PASSWORD = "tls-test-password"


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    """(port, CA file): redis-server serving TLS alone (no plain port), its certificate self-signed for 127.0.0.1
    (by the openssl command, which Debian's ca-certificates package, and so every image that runs pip, brings)."""
    if shutil.which("redis-server") is None or shutil.which("openssl") is None:
        pytest.fail("redis-server and openssl are needed (make setup installs them)")
    d = tmp_path_factory.mktemp("tls")
    key, crt = d / "server.key", d / "server.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", crt, "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "-", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(d), "--tls-cert-file", str(crt), "--tls-key-file", str(key),
         "--tls-ca-cert-file", str(crt), "--tls-auth-clients", "no"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    proc.stdin.write(f"requirepass {PASSWORD}\n")  # not in argv, as cluster.services does
    proc.stdin.close()
    import redis

    url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={crt}"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url, socket_timeout=1).ping()
            break
        except redis.ConnectionError:
            assert proc.poll() is None and time.monotonic() < deadline, "redis-server with TLS did not start"
            time.sleep(0.1)
    yield port, crt
    proc.kill()
    proc.wait()


def test_the_verdict_cache_and_the_control_plane_work_through_tls(tls_redis):
    """Catches: a cache or control-plane client that loses the URL's scheme or its ``ssl_ca_certs`` (rebuilding
    the URL from parts, say), which would reach a TLS-only Redis not at all: every lookup a miss, no write."""
    from actors.score_stats import CacheResult
    from actors.verdict_cache import VerdictCache
    from cluster.config_services import CacheSection
    from cluster.control import ControlPlane

    port, crt = tls_redis
    section = CacheSection(url=f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={crt}", password_env="TLS_TEST_PW")
    import os

    os.environ["TLS_TEST_PW"] = PASSWORD
    try:
        cache = VerdictCache.from_config(section)
    finally:
        del os.environ["TLS_TEST_PW"]
    cache.put_many({"k1": {"verdict": 1.0, "judge": "j"}})
    assert cache.get_many(["k1", "k2"]) == [{"verdict": 1.0, "judge": "j"}, None]
    assert cache.stats[CacheResult.WRITES] == 1 and cache.stats[CacheResult.HITS] == 1
    assert not cache.stats[CacheResult.UNAVAILABLE]
    control = ControlPlane(section.url, "tls-run", password=PASSWORD)
    control.set_desired_workers(3)
    assert control.desired_workers() == 3 and control.unavailable == 0


def test_tls_without_the_servers_ca_or_without_tls_is_an_outage_not_a_silent_plain_connection(tls_redis):
    """Catches: a client that skips certificate checks (a man in the middle would read the password and verdicts)
    or falls back to plain text; either way here it must fail, be counted, and score on uncached."""
    from actors.score_stats import CacheResult
    from actors.verdict_cache import VerdictCache

    port, _ = tls_redis
    for url in (f"rediss://:{PASSWORD}@127.0.0.1:{port}/0", f"redis://:{PASSWORD}@127.0.0.1:{port}/0"):
        cache = VerdictCache(url, socket_timeout_s=2)
        assert cache.get_many(["k1"]) == [None], url
        assert cache.stats[CacheResult.UNAVAILABLE] == 1 and not cache.stats[CacheResult.HITS], url


def test_a_remote_rediss_url_passes_the_start_up_check_and_redis_does_not():
    """The start-up check lets a TLS URL to another host through and refuses the same in clear. Catches a check that
    refuses every remote Redis (TLS included) or none."""
    from cluster.config_services import CacheSection
    from cluster.preflight import ConfigError, check_cache_transport

    check_cache_transport(CacheSection(url="rediss://:pw@10.1.2.3:6380/0?ssl_ca_certs=/etc/videop2r/ca.crt"))
    with pytest.raises(ConfigError, match="without TLS"):
        check_cache_transport(CacheSection(url="redis://:pw@10.1.2.3:6379/0"))
