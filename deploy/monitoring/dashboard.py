"""Builds the Grafana dashboard (grafana/videop2r.json) from the panel list below:
    python deploy/monitoring/dashboard.py            (rewrites the JSON; tests check the two agree)

Variables: the Prometheus datasource, the run id (from ``videop2r_run_info``), and the exporter instance of that
run (hidden, derived from the run id: the run's metrics carry no run-id label, its exporter's address does).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "grafana" / "videop2r.json"
RUN = 'instance=~"$instance"'  # every videop2r query is narrowed to the chosen run's exporter
RATE = "$__rate_interval"

# (row title, [(panel title, unit, stacked, [(expr, legend)])])
ROWS = [
    (
        "Rewards",
        [
            (
                "Perception vs reasoning reward",
                "none",
                False,
                [(f'videop2r_reward{{{RUN},part="total"}}', "{{process}}")],
            ),
            ("Reward parts", "none", False, [(f'videop2r_reward{{{RUN},part!="total"}}', "{{process}} {{part}}")]),
            (
                "Accuracy by problem type",
                "percentunit",
                False,
                [(f"videop2r_accuracy_by_type{{{RUN}}}", "{{problem_type}}")],
            ),
            (
                "Flat groups (no advantage)",
                "percentunit",
                False,
                [(f"videop2r_flat_groups_ratio{{{RUN}}}", "{{process}}")],
            ),
            ("Segment lengths", "none", False, [(f"videop2r_segment_tokens{{{RUN}}}", "{{segment}} tokens")]),
        ],
    ),
    (
        "Judge",
        [
            (
                "Perception Yes-rate",
                "percentunit",
                False,
                [
                    (f"videop2r_judge_yes_ratio{{{RUN}}}", "last step"),
                    (
                        f'sum(rate(videop2r_judge_verdicts_total{{{RUN},outcome="yes"}}[{RATE}])) / '
                        f'sum(rate(videop2r_judge_verdicts_total{{{RUN},outcome=~"yes|no"}}[{RATE}]))',
                        "rate window",
                    ),
                ],
            ),
            (
                "Verdicts by outcome",
                "ops",
                True,
                [(f"sum by (outcome) (rate(videop2r_judge_verdicts_total{{{RUN}}}[{RATE}]))", "{{outcome}}")],
            ),
            (
                "Judge call latency",
                "s",
                False,
                [
                    (
                        f"histogram_quantile(0.5, sum by (le) (rate(videop2r_judge_call_duration_seconds_bucket{{{RUN}}}[{RATE}])))",
                        "p50",
                    ),
                    (
                        f"histogram_quantile(0.95, sum by (le) (rate(videop2r_judge_call_duration_seconds_bucket{{{RUN}}}[{RATE}])))",
                        "p95",
                    ),
                ],
            ),
            (
                "Verdict cache",
                "percentunit",
                False,
                [
                    (
                        f'sum(rate(videop2r_verdict_cache_total{{{RUN},result="hits"}}[{RATE}])) / '
                        f'sum(rate(videop2r_verdict_cache_total{{{RUN},result=~"hits|misses"}}[{RATE}]))',
                        "hit ratio",
                    ),
                    (f"rate(videop2r_cache_down_seconds_total{{{RUN}}}[{RATE}])", "share of time down"),
                ],
            ),
        ],
    ),
    (
        "Learner",
        [
            ("Loss", "none", False, [(f"videop2r_loss{{{RUN}}}", "loss")]),
            (
                "KL",
                "none",
                False,
                [(f"videop2r_kl{{{RUN}}}", "KL to reference"), (f"videop2r_mismatch_kl{{{RUN}}}", "vLLM vs learner")],
            ),
            ("Gradient norm", "none", False, [(f"videop2r_grad_norm{{{RUN}}}", "grad norm")]),
            (
                "Clip ratio and entropy",
                "none",
                False,
                [
                    (f"videop2r_clip_ratio{{{RUN}}}", "clip ratio"),
                    (f"videop2r_entropy_nats{{{RUN}}}", "entropy (nats)"),
                ],
            ),
            ("Learning rate", "none", False, [(f"videop2r_learning_rate{{{RUN}}}", "lr")]),
        ],
    ),
    (
        "System",
        [
            ("Step time split", "s", True, [(f"videop2r_step_phase_seconds{{{RUN}}}", "{{phase}}")]),
            (
                "Throughput",
                "none",
                False,
                [
                    (f"videop2r_generated_tokens_per_second{{{RUN}}}", "generated tokens/s"),
                    (f"videop2r_trained_tokens_per_second{{{RUN}}}", "trained tokens/s"),
                ],
            ),
            ("Weight sync", "s", False, [(f"videop2r_sync_seconds{{{RUN}}}", "sync")]),
            (
                "Staleness (weight versions)",
                "none",
                False,
                [(f"videop2r_staleness_mean{{{RUN}}}", "mean"), (f"videop2r_staleness_max{{{RUN}}}", "max")],
            ),
            (
                "Workers",
                "none",
                False,
                [
                    (f"videop2r_rollout_workers_desired{{{RUN}}}", "rollout desired"),
                    (f"videop2r_rollout_workers_ready{{{RUN}}}", "rollout ready"),
                    (f"videop2r_reward_workers{{{RUN}}}", "reward workers"),
                    (f"increase(videop2r_rollout_worker_restarts_total{{{RUN}}}[1h])", "rollout restarts (1h)"),
                    (f"increase(videop2r_reward_chunks_rescored_total{{{RUN}}}[1h])", "reward chunks rescored (1h)"),
                ],
            ),
            (
                "Skipped inputs and steps",
                "none",
                False,
                [
                    (f"increase(videop2r_inputs_skipped_total{{{RUN}}}[1h])", "skipped rows: {{reason}}"),
                    (f"increase(videop2r_perception_zeroed_steps_total{{{RUN}}}[1h])", "steps without perception"),
                    (f"increase(videop2r_nonfinite_steps_total{{{RUN}}}[1h])", "non-finite steps"),
                ],
            ),
            (
                "vLLM engines (cluster)",
                "none",
                False,
                [
                    (f"sum by (worker) (rate(ray_vllm_generation_tokens_total[{RATE}]))", "tokens/s {{worker}}"),
                    (
                        f"sum by (worker) (rate(ray_vllm_time_to_first_token_seconds_sum[{RATE}])) / "
                        f"sum by (worker) (rate(ray_vllm_time_to_first_token_seconds_count[{RATE}]))",
                        "TTFT s {{worker}}",
                    ),
                    ("ray_vllm_kv_cache_usage_perc", "KV cache use {{worker}}"),
                ],
            ),
            (
                "Ray nodes (cluster)",
                "percent",
                False,
                [('ray_node_cpu_utilization{SessionName=~".+"}', "CPU {{instance}}")],
            ),
        ],
    ),
]


def _variables() -> list[dict]:
    return [
        {
            "name": "datasource",
            "label": "Prometheus",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
            "refresh": 1,
        },
        {
            "name": "run_id",
            "label": "Run",
            "type": "query",
            "datasource": {"type": "prometheus", "uid": "$datasource"},
            "query": {"query": "label_values(videop2r_run_info, run_id)", "refId": "run_id"},
            "definition": "label_values(videop2r_run_info, run_id)",
            "refresh": 2,
            "sort": 0,
            "hide": 0,
            "current": {},
        },
        {
            "name": "instance",
            "label": "Exporter",
            "type": "query",
            "datasource": {"type": "prometheus", "uid": "$datasource"},
            "query": {"query": 'label_values(videop2r_run_info{run_id="$run_id"}, instance)', "refId": "instance"},
            "definition": 'label_values(videop2r_run_info{run_id="$run_id"}, instance)',
            "refresh": 2,
            "hide": 2,
            "includeAll": True,
            "multi": True,
            "current": {},
        },
    ]


def build() -> dict:
    panels, pid, y = [], 1, 0
    for row_title, row in ROWS:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        pid, y = pid + 1, y + 1
        for k, (title, unit, stacked, queries) in enumerate(row):
            panels.append(
                {
                    "id": pid,
                    "type": "timeseries",
                    "title": title,
                    "datasource": {"type": "prometheus", "uid": "$datasource"},
                    "gridPos": {"h": 8, "w": 8, "x": 8 * (k % 3), "y": y + 8 * (k // 3)},
                    "fieldConfig": {
                        "defaults": {
                            "unit": unit,
                            "custom": {
                                "stacking": {"mode": "normal" if stacked else "none"},
                                "fillOpacity": 40 if stacked else 0,
                            },
                        },
                        "overrides": [],
                    },
                    "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
                    "targets": [
                        {
                            "refId": chr(65 + j),
                            "expr": expr,
                            "legendFormat": legend,
                            "datasource": {"type": "prometheus", "uid": "$datasource"},
                        }
                        for j, (expr, legend) in enumerate(queries)
                    ],
                }
            )
            pid += 1
        y += 8 * ((len(row) + 2) // 3)
    return {
        "uid": "videop2r-run",
        "title": "VideoP2R training run",
        "tags": ["videop2r"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "",
        "templating": {"list": _variables()},
        "annotations": {"list": []},
        "panels": panels,
    }


def queries(dashboard: dict) -> list[str]:
    """Every panel query of the dashboard."""
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=1) + "\n")
    print(f"wrote {OUT} ({len(queries(build()))} queries)", file=sys.stderr)
