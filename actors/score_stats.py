"""The counters a reward worker keeps per scored batch, as enums: the scorer counts with these members and the
Prometheus exporter (``cluster.metrics``) iterates over them, so a counter cannot be kept and go unexported, nor
exported under a misspelt name. The members are strings (``StrEnum``), so a batch's ``Counter`` still reads and
serialises as plain keys (``stats["judge_ok"]``)."""

from __future__ import annotations

from enum import StrEnum


class JudgeStatus(StrEnum):
    """How a rollout's perception verdict was obtained (``judges.Outcome.status``, plus cached / not needed)."""

    OK = "ok"
    CACHED = "cached"
    UNPARSEABLE = "unparseable"  # the judge answered, but neither yes nor no
    FAILED = "failed"
    TIMEOUT = "timeout"
    DEADLINE = "deadline"  # the batch's time ran out before this request was answered
    NOT_NEEDED = "not_needed"  # no observation to judge (format failure): R_P's accuracy part is 0


# outcomes that gave no verdict (the rollout's perception reward is then handled by reward.missing_verdict)
NO_VERDICT = (JudgeStatus.UNPARSEABLE, JudgeStatus.FAILED, JudgeStatus.TIMEOUT, JudgeStatus.DEADLINE)


class CacheResult(StrEnum):
    """Verdict-cache operations (``VerdictCache.stats``)."""

    HITS = "hits"
    MISSES = "misses"
    WRITES = "writes"
    UNAVAILABLE = "unavailable"  # a Redis error (one per failed call)
    SKIPPED_UNAVAILABLE = "skipped_unavailable"  # lookups not tried while Redis was down
    CORRUPT = "corrupt"  # an entry that is not our JSON
    FOREIGN = "foreign"  # an entry of another judge identity (or without a verdict): judged again


class ScoreCount(StrEnum):
    """The batch counters that are not per judge status or cache result."""

    ROLLOUTS = "rollouts"
    JUDGE_CALLS = "judge_calls"  # requests sent to the judge (after de-duplication and the cache)
    VERDICT_YES = "verdict_yes"  # rollouts whose observation the judge found sufficient (fresh or cached)
    VERDICT_NO = "verdict_no"
    PERCEPTION_EXCLUDED = "perception_excluded"  # left out of perception normalisation (no verdict)
    WORKER_STARTS = "worker_starts"  # reward workers scoring their first batch (a start or a restart)
    RESCORED_CHUNKS = "rescored_chunks"  # chunks scored again because their worker died or became unreachable
    CACHE_DOWN = "cache_down"  # batches scored while Redis was down
    CACHE_DISABLED = "cache_disabled"  # batches scored with the cache turned off
    CACHE_DOWN_SECONDS = "cache_down_seconds"  # time Redis was unreachable, as the workers saw it


def judge_key(status: JudgeStatus | str) -> str:
    return f"judge_{JudgeStatus(status)}"


def cache_key(result: CacheResult | str) -> str:
    return f"cache_{CacheResult(result)}"


# every key a batch's counters may hold
ALL_KEYS = frozenset([*map(str, ScoreCount), *map(judge_key, JudgeStatus), *map(cache_key, CacheResult)])
