"""The sections of the run config for its plumbing: the weight transport, the driver's metrics exporter and the
Redis verdict cache (re-exported by ``cluster.config``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from cluster.config_loader import Section


class TransportSection(Section):
    """Weight broadcast from the learner to the rollout workers: gloo on CPU, nccl on GPU."""

    backend: Literal["gloo", "nccl"] | None = None  # None: nccl when both ends have GPUs, else gloo
    # channels: one two-member group per worker (the sender sends the model once per worker; a dead worker fails
    # alone). group: one group of every worker, the model sent once (a relay on gloo, nccl's ring broadcast);
    # a failed group sync falls back to channels for that sync
    scheme: Literal["channels", "group"] = "channels"
    bucket_mb: float = Field(64, gt=0)  # tensors are sent in buckets of about this many MiB
    timeout_s: float = Field(60, gt=0)  # channel set-up and each transfer; a missing peer fails after this
    # the sender's address as workers see it, and the only interface its channels listen on; default: this node's IP
    host: str | None = None
    # a sha256 per bucket, sent in the plan and checked by each worker before it loads the bucket (an altered or
    # corrupted bucket is refused). None: on with gloo (CPU buckets), off with nccl (it would copy every bucket
    # from the GPU to hash it)
    verify_buckets: bool | None = None

    @property
    def verifies(self) -> bool:
        return self.verify_buckets if self.verify_buckets is not None else self.backend != "nccl"

    @model_validator(mode="after")
    def _connectable(self):
        if self.host is not None and self.host.strip("[]") in ("0.0.0.0", "::", ""):
            raise ValueError(
                f"transport.host={self.host!r} is no address a worker can connect to: leave it unset "
                "(each learner uses its node's address) or give that address"
            )
        return self


class MetricsSection(Section):
    port: int = Field(0, ge=0, le=65535)  # the driver's Prometheus /metrics and /health; 0 = off
    # 127.0.0.1 keeps the exporter on this machine; a cluster's Prometheus needs 0.0.0.0 (deploy/kuberay does this)
    host: str = "127.0.0.1"
    stall_after_s: float = Field(600.0, gt=0)  # /health answers 503 once no step finished for this long


class CacheSection(Section):
    """The Redis verdict cache shared by all reward workers. Works without Redis (one warning, a metric)."""

    enabled: bool = True  # use the verdict cache
    url: str = "redis://127.0.0.1:6379/0"  # redis:// or rediss:// (TLS); a password in it is redacted in saved configs
    url_env: str = "VIDEOP2R_REDIS_URL"  # when set, overrides url
    password_env: str = "REDIS_PASSWORD"  # the variable holding the Redis password (read by the driver)
    ttl_s: int = Field(7 * 24 * 3600, ge=1)  # how long a verdict stays cached
    socket_timeout_s: float = Field(0.5, gt=0)  # one Redis call; a slower Redis counts as an outage
    retry_after_s: float = Field(10, ge=0)  # after a failure, judge without the cache this long before retrying
    # start a redis-server for this run on the driver's host and use it (on loopback in a private local cluster,
    # on the node's address, behind a random password, in a cluster of several hosts)
    start_local: bool = False
    # redis:// (no TLS) to a Redis on another host, or start_local's server on a cluster of several hosts: the
    # password and the verdicts cross the network in clear. Refused unless true (a network you trust, e.g. a
    # namespace fenced by deploy/kuberay/networkpolicy.yaml); otherwise give a rediss:// URL (Redis with TLS).
    allow_insecure: bool = False
