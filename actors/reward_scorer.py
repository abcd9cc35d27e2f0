"""Scores a batch of rollouts: parse, judge the observations (through the cache), and combine into R_P and R_R.

``RewardScorer`` is plain Python so it can be tested and benchmarked alone; ``actors.reward_pool`` runs it as
Ray actors. Its results come back in input order with per-batch counters (cache hits, judge outcomes, ...).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from actors.judges import JudgeRequest, Outcome, make_judge
from actors.score_stats import CacheResult, JudgeStatus, ScoreCount, cache_key, judge_key
from actors.verdict_cache import VerdictCache
from rewards import LengthRule, needs_judge, parse_response, process_rewards, verdict_key
from videoqa.prompts import question_text
from videoqa.schema import Sample, option_letters


@dataclass(frozen=True)
class ScoreItem:
    """One rollout to score, with what the rewards need from its dataset row."""

    question: str  # with the options appended, as the policy saw it
    correct_answer: str  # for the judge: the option text for multiple choice ("B. right"), else the answer
    solution: str
    problem_type: str
    data_type: str
    response: str
    facts: dict | None = None

    @classmethod
    def from_sample(cls, sample: Sample, response: str) -> ScoreItem:
        answer = sample.answer
        if sample.problem_type == "multiple choice":
            letters = option_letters(sample.options)
            if answer in letters:
                answer = sample.options[letters.index(answer)]
        return cls(
            question_text(sample),
            answer,
            sample.solution,
            sample.problem_type,
            sample.data_type,
            response,
            sample.extra.get("facts"),
        )


@dataclass
class ScoredBatch:
    rewards: list  # ProcessRewards, in input order
    stats: Counter  # keyed by actors.score_stats (ScoreCount, judge_key(JudgeStatus), cache_key(CacheResult))
    judge_seconds: list[float] = field(default_factory=list)  # the wall time of each judge call

    def merge(self, other: ScoredBatch) -> ScoredBatch:
        return ScoredBatch(
            self.rewards + other.rewards, self.stats + other.stats, self.judge_seconds + other.judge_seconds
        )


class RewardScorer:
    def __init__(
        self,
        reward_cfg,
        judge_cfg,
        cache_cfg,
        tokenizer_path: str | None,
        judge_engines: list | None = None,
        secrets: dict | None = None,
    ):
        """``secrets``: environment variables to set in this process first (the driver's judge key and Redis
        password, ``actors.reward_pool.driver_secrets``), which the judge and the cache read."""
        import os

        os.environ.update(secrets or {})
        self.reward_cfg, self.judge_cfg = reward_cfg, judge_cfg
        self.rule = LengthRule(reward_cfg.perception_length, reward_cfg.reasoning_length, reward_cfg.length_bonus)
        self.judge = make_judge(judge_cfg, judge_engines)
        self.cache = VerdictCache.from_config(cache_cfg)
        self._fresh = True  # the first batch after a (re)start counts it: a restarted worker shows in the metrics
        self.tokenizer = None
        if tokenizer_path:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)

    def _tokens(self, text: str | None) -> int:
        if not text:
            return 0
        if self.tokenizer is None:
            return len(text.split())
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def _judge(self, requests: dict[str, JudgeRequest], stats: Counter, seconds: list) -> dict[str, Outcome]:
        """Verdicts for unique requests: from the cache where possible, else from the judge (then cached)."""
        keys = list(requests)
        outcomes: dict[str, Outcome] = {}
        cache_before = Counter(self.cache.stats) if self.cache else Counter()
        cached = self.cache.get_many(keys) if self.cache else [None] * len(keys)
        for k, hit in zip(keys, cached):
            if hit is None:
                continue
            if hit.get("judge") != self.judge.model_id or not isinstance(hit.get("verdict"), bool):
                stats[cache_key(CacheResult.FOREIGN)] += 1  # another judge's verdict (or not a verdict): judged again
                continue
            outcomes[k] = Outcome(hit["verdict"], JudgeStatus.CACHED)
        todo = [k for k in keys if k not in outcomes]
        if todo:
            deadline = time.monotonic() + self.judge_cfg.batch_deadline_s
            stats[ScoreCount.JUDGE_CALLS] += len(todo)
            t0 = time.monotonic()
            results = self.judge.verdicts([requests[k] for k in todo], deadline)
            seconds.append(time.monotonic() - t0)
            fresh = {}
            for k, o in zip(todo, results):
                outcomes[k] = o
                if o.verdict is not None:
                    fresh[k] = {"verdict": o.verdict, "judge": self.judge.model_id, "at": int(time.time())}
            if self.cache:
                self.cache.put_many(fresh)
        if self.cache:
            for name, n in (Counter(self.cache.stats) - cache_before).items():
                stats[cache_key(name)] += n
            if not self.cache.available:
                stats[ScoreCount.CACHE_DOWN] += 1
            stats[ScoreCount.CACHE_DOWN_SECONDS] += self.cache.take_down_seconds()
        elif self.cache is None:
            stats[ScoreCount.CACHE_DISABLED] += 1
        return outcomes

    def score(self, items: list[ScoreItem]) -> ScoredBatch:
        stats: Counter = Counter()
        seconds: list[float] = []
        if self._fresh:
            stats[ScoreCount.WORKER_STARTS] += 1
            self._fresh = False
        parsed = [parse_response(it.response) for it in items]
        keys: list[str | None] = []
        requests: dict[str, JudgeRequest] = {}
        for it, p in zip(items, parsed):
            if not needs_judge(p):
                keys.append(None)
                continue
            facts = it.facts if getattr(self.judge, "reads_facts", False) else None
            k = verdict_key(self.judge.model_id, it.question, it.correct_answer, p.observation, it.data_type, facts)
            keys.append(k)
            requests.setdefault(k, JudgeRequest(it.question, it.correct_answer, p.observation, it.data_type, it.facts))
        outcomes = self._judge(requests, stats, seconds) if requests else {}
        rewards = []
        for it, p, k in zip(items, parsed, keys):
            outcome = outcomes.get(k) if k else None
            if outcome is not None:
                stats[judge_key(outcome.status)] += 1
                if outcome.verdict is not None:
                    stats[ScoreCount.VERDICT_YES if outcome.verdict else ScoreCount.VERDICT_NO] += 1
            else:
                stats[judge_key(JudgeStatus.NOT_NEEDED)] += 1
            rewards.append(
                process_rewards(
                    p,
                    it.solution,
                    it.problem_type,
                    outcome.verdict if outcome else None,
                    self._tokens(p.observation),
                    self._tokens(p.think) + self._tokens(p.answer),
                    self.rule,
                    self.reward_cfg.missing_verdict,
                )
            )
        stats[ScoreCount.ROLLOUTS] += len(items)
        stats[ScoreCount.PERCEPTION_EXCLUDED] += sum(not r.perception_valid for r in rewards)
        return ScoredBatch(rewards, stats, seconds)
