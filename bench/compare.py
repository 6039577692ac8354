"""``python -m bench compare RESULT BASELINE``: flag regressions, exit non-zero on any.

Only throughput and p95 latency are compared, per (codec, workload): they are
the figures the acceptance targets are about, and p99 on a shared 2-core box
is too noisy to gate on. Also compared when both runs have them: the single-save
ratio to its raw replay (median of window pairs) per codec, and every scale figure
(``scale/<workload>/<figure>``; rates higher is better, ms / bytes / memory lower).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HIGHER_IS_BETTER = ("saves_per_s", "workflows_per_s")
LOWER_IS_BETTER = ("workflow_latency_ms.p95",)


def _get(run: dict[str, Any], dotted: str) -> float | None:
    value: Any = run
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) else None


def _index(result: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["codec"], r["workload"]): r for r in result.get("runs", []) if not r.get("skipped")}


def _higher_is_better(unit: str) -> bool | None:
    """Rates are better higher; times, sizes and memory lower; anything else is not compared."""
    if unit.endswith("/s"):
        return True
    if unit in ("ms", "B", "x payload", "MB"):
        return False
    return None


def _extra_figures(result: dict[str, Any]) -> dict[str, tuple[float, bool]]:
    """name -> (value, higher is better) for the single-save ratios and the scale figures."""
    out: dict[str, tuple[float, bool]] = {}
    for codec, pairs in (result.get("single_save") or {}).items():
        if isinstance(pairs.get("ratio"), int | float):
            out[f"single_save/{codec}/ratio_to_replay"] = (float(pairs["ratio"]), True)
    workloads = (result.get("scale") or {}).get("workloads") or {}
    for name, found in workloads.items():
        for key, fig in (found.get("figures") or {}).items():
            better = _higher_is_better(str(fig.get("unit", "")))
            value = fig.get("value")
            if better is not None and isinstance(value, int | float):
                out[f"scale/{name}/{key}"] = (float(value), better)
    return out


def _compare_extra(result: dict[str, Any], baseline: dict[str, Any], threshold: float) -> list[str]:
    lines: list[str] = []
    now, base = _extra_figures(result), _extra_figures(baseline)
    for key in sorted(base):
        if key not in now:
            lines.append(f"missing    {key}: in the baseline, not measured now")
            continue
        (old, higher), (new, _) = base[key], now[key]
        if old == 0:
            continue
        change = (new - old) / old
        worse = -change if higher else change
        tag = "REGRESSION" if worse > threshold else "ok"
        lines.append(f"{tag:10} {key}: {old:,.3f} -> {new:,.3f} ({change:+.1%})")
    return lines


def compare(result: dict[str, Any], baseline: dict[str, Any], threshold: float) -> list[str]:
    """Human-readable lines; those starting with ``REGRESSION`` are the failures."""
    lines: list[str] = []
    now, base = _index(result), _index(baseline)
    for key in sorted(base):
        if key not in now:
            lines.append(f"missing    {key[0]}/{key[1]}: in the baseline, not run now")
            continue
        if now[key].get("failed"):
            lines.append(f"REGRESSION {key[0]}/{key[1]}: failed: {now[key]['failed']}")
            continue
        for metric in HIGHER_IS_BETTER + LOWER_IS_BETTER:
            old, new = _get(base[key], metric), _get(now[key], metric)
            if old is None or new is None or old == 0:
                continue
            change = (new - old) / old
            worse = -change if metric in HIGHER_IS_BETTER else change
            tag = "REGRESSION" if worse > threshold else "ok"
            lines.append(
                f"{tag:10} {key[0]}/{key[1]} {metric}: {old:,.1f} -> {new:,.1f} ({change:+.1%})"
            )
    return lines + _compare_extra(result, baseline, threshold)


def main(result_path: Path, baseline_path: Path, threshold: float) -> int:
    result = json.loads(result_path.read_text())
    baseline = json.loads(baseline_path.read_text())
    lines = compare(result, baseline, threshold)
    print("\n".join(lines) if lines else "nothing comparable")
    regressions = [line for line in lines if line.startswith("REGRESSION")]
    print(f"{len(regressions)} regression(s) beyond {threshold:.0%}")
    return 1 if regressions else 0
