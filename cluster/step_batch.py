"""One RL step's data as the driver holds it: the prompts (decoded once each), their G rollouts, the rewards, and
how it turns into what the learner, the rollout log and the metrics need. No Ray here."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from actors.score_stats import NO_VERDICT, JudgeStatus, judge_key


@dataclass
class StepBatch:
    step: int
    rows: list[int]  # dataset indices, one per prompt
    items: list  # videoqa.loader.LoadedSample, one per prompt
    results: list  # actors.rollout_worker.RolloutResult, one per prompt (G responses each)
    rewards: list = field(default_factory=list)  # rewards.ProcessRewards, per rollout, group after group
    score_stats: Counter = field(default_factory=Counter)  # keyed by actors.score_stats
    judge_seconds: list = field(default_factory=list)  # the wall time of each judge call
    timings: dict = field(default_factory=dict)
    regenerated_groups: int = 0  # groups sampled again because they were too stale
    resampled_groups: int = 0  # flat groups replaced by fresh prompts (dynamic sampling)
    zero_perception: bool = False  # too many missing verdicts: this step trains without perception advantages
    learner_version: int = 0  # the weight version the update on this batch started from
    order_before: dict | None = None  # the data order's state before this batch took its rows

    @property
    def group_size(self) -> int:
        return len(self.results[0].responses)

    def responses(self):
        """(prompt index, response) for every rollout, group after group."""
        return [(i, resp) for i, res in enumerate(self.results) for resp in res.responses]

    def versions(self) -> list[int]:
        return [res.weight_version for res in self.results]

    def missing_verdict_fraction(self) -> float:
        """Of the rollouts that needed a verdict, the share the judge did not give."""
        missing = sum(self.score_stats.get(judge_key(s), 0) for s in NO_VERDICT)
        judged = missing + sum(self.score_stats.get(judge_key(s), 0) for s in (JudgeStatus.OK, JudgeStatus.CACHED))
        return missing / judged if judged else 0.0

    def learner_rollouts(self, learner_version: int) -> list[dict]:
        """What each learner rank needs per rollout (the prompt travels once, by index into ``items``)."""
        out = []
        for (i, resp), r in zip(self.responses(), self.rewards):
            out.append(
                dict(
                    prompt_index=i,
                    response_ids=resp.token_ids,
                    r_perception=r.perception,
                    r_reasoning=r.reasoning,
                    perception_valid=r.perception_valid,
                    behaviour_logprobs=resp.logprobs,
                    stale=self.results[i].weight_version < learner_version,
                )
            )
        return out

    def flat_groups(self) -> tuple[list[bool], list[bool]]:
        """Per group: (no R_P variance, no R_R variance)."""
        G = self.group_size
        p = np.array([r.perception for r in self.rewards]).reshape(-1, G)
        q = np.array([r.reasoning for r in self.rewards]).reshape(-1, G)
        return list(np.ptp(p, 1) < 1e-6), list(np.ptp(q, 1) < 1e-6)

    def replace_groups(self, positions: list[int], other: StepBatch) -> None:
        """Puts ``other``'s groups at ``positions`` (dynamic sampling and staleness refresh)."""
        G = self.group_size
        for j, pos in enumerate(positions):
            self.rows[pos], self.items[pos], self.results[pos] = other.rows[j], other.items[j], other.results[j]
            self.rewards[pos * G : (pos + 1) * G] = other.rewards[j * G : (j + 1) * G]
        self.score_stats += other.score_stats
        self.judge_seconds += other.judge_seconds

    def log_rows(self, advantages: dict | None = None) -> list[dict]:
        """The rollout log: one row per rollout."""
        rows = []
        for k, ((i, resp), r) in enumerate(zip(self.responses(), self.rewards)):
            s = self.items[i].sample
            rows.append(
                dict(
                    step=self.step,
                    prompt_id=s.problem_id,
                    row=self.rows[i],
                    problem_type=s.problem_type,
                    sample_index=k % self.group_size,
                    response=resp.text,
                    response_tokens=len(resp.token_ids),
                    finish_reason=resp.finish_reason,
                    weight_version=self.results[i].weight_version,
                    worker=self.results[i].worker,
                    r_perception=r.perception,
                    r_reasoning=r.reasoning,
                    acc_p=r.acc_p,
                    form_p=r.form_p,
                    len_p=r.len_p,
                    acc_r=r.acc_r,
                    form_r=r.form_r,
                    len_r=r.len_r,
                    verdict=r.verdict,
                    perception_valid=r.perception_valid,
                    **({name: float(v[k]) for name, v in advantages.items()} if advantages else {}),
                )
            )
        return rows

    def reward_summary(self) -> dict:
        n = max(1, len(self.rewards))
        by_type: dict[str, list[float]] = {}
        for (i, _), r in zip(self.responses(), self.rewards):
            by_type.setdefault(self.items[i].sample.problem_type, []).append(r.acc_r)
        verdicts = [r.verdict for r in self.rewards if r.verdict is not None]
        out = {
            "reward_perception": sum(r.perception for r in self.rewards) / n,
            "reward_reasoning": sum(r.reasoning for r in self.rewards) / n,
            "accuracy": sum(r.acc_r for r in self.rewards) / n,  # the reasoning accuracy
            "accuracy_perception": sum(r.acc_p for r in self.rewards) / n,
            "format_perception": sum(r.form_p for r in self.rewards) / n,
            "format_reasoning": sum(r.form_r for r in self.rewards) / n,
            "length_perception": sum(r.len_p for r in self.rewards) / n,
            "length_reasoning": sum(r.len_r for r in self.rewards) / n,
            "judge_yes_rate": sum(verdicts) / len(verdicts) if verdicts else 0.0,
            "response_tokens": float(np.mean([len(resp.token_ids) for _, resp in self.responses()])),
        }
        out.update({f"accuracy/{t}": float(np.mean(v)) for t, v in sorted(by_type.items())})
        return out
