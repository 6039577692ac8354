"""The design's acceptance targets, checked against a finished run.

Failures are reported with their figures, never hidden: a missing API or a
missing measurement is a FAIL with the reason, not a silent skip.
"""

from __future__ import annotations

from typing import Any

from bench.ceiling import workflow_ceiling_name

SINGLE_SAVE_FRACTION = 0.75
GROUPED_TARGET = 10_000.0
GROUPED_WORKLOADS = ("save_many", "group_commit")


def _rate(runs: list[dict[str, Any]], codec: str, workload: str) -> float | None:
    for r in runs:
        if r["codec"] == codec and r["workload"] == workload and "saves_per_s" in r:
            return float(r["saves_per_s"])
    return None


def _versus_others(single: float, ceilings: dict[str, Any]) -> str:
    """For information: the statement on fixed rows over psycopg (raw_single) and driven by
    pgbench (a C client, no GIL)."""
    parts = []
    for name in ("raw_single", "pgbench_single"):
        rate = (ceilings.get(name) or {}).get("saves_per_s")
        if rate:
            parts.append(f"; vs {name} {float(rate):,.0f}/s = {single / float(rate):.0%}")
    return "".join(parts)


def check(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per codec and target: name, passed, value, target, detail."""
    runs: list[dict[str, Any]] = result["runs"]
    ceilings: dict[str, Any] = result.get("ceilings") or {}
    checks: list[dict[str, Any]] = []
    for codec in result["config"]["codecs"]:
        # The reference: the saves workload's own statements replayed over bare psycopg.
        ceiling = ceilings.get(workflow_ceiling_name(codec)) or {}
        raw_rate = ceiling.get("saves_per_s")
        ceiling_rate = None if raw_rate is None else float(raw_rate)
        single = _rate(runs, codec, "saves")
        target = None if ceiling_rate is None else SINGLE_SAVE_FRACTION * ceiling_rate
        if single is None or ceiling_rate is None or target is None:
            missing = "single-save run" if single is None else "raw ceiling"
            detail = f"not measured ({missing} missing)"
            passed = False
        else:
            passed = single >= target
            detail = (
                f"{single:,.0f} saves/s vs its statements replayed raw "
                f"{ceiling_rate:,.0f} at {ceiling.get('threads')} threads = "
                f"{single / ceiling_rate:.0%} (need >= {SINGLE_SAVE_FRACTION:.0%})"
                + _versus_others(single, ceilings)
            )
        checks.append(
            {
                "name": f"single-save path >= 75% of raw ceiling [{codec}]",
                "codec": codec,
                "passed": passed,
                "value": single,
                "target": target,
                "detail": detail,
            }
        )
        grouped = {w: _rate(runs, codec, w) for w in GROUPED_WORKLOADS}
        measured = {w: v for w, v in grouped.items() if v is not None}
        best = max(measured.values()) if measured else None
        checks.append(
            {
                "name": f"grouped path >= 10k durable saves/s [{codec}]",
                "codec": codec,
                "passed": best is not None and best >= GROUPED_TARGET,
                "value": best,
                "target": GROUPED_TARGET,
                "detail": (
                    ", ".join(f"{w} {v:,.0f}/s" for w, v in measured.items())
                    if measured
                    else "not measured (save_many / group_commit not run or not available)"
                ),
            }
        )
    return checks
