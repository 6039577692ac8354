"""Verdicts from repeated windows: medians, per-window ratios and their spread.

One window of a few seconds on a shared 2-core machine moves by 10% or more from run to
run, so a gate on one window against one window mostly measures the noise. Here a figure is
the median of several windows, a store-vs-reference ratio is the ratio of the two medians
(the windows alternating, store and reference measured minutes apart never), and the
spread is the min-max of the per-window ratios (window i of the store over window i of the
reference, measured back to back). A verdict is PASS, FAIL or ``not measured``, the last a
FAIL with the reason, never a silent pass.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

PASS, FAIL, NOT_MEASURED = "PASS", "FAIL", "not measured"


def median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def median_index(values: Sequence[float]) -> int:
    """Index of the (upper) median value: the window whose other figures are reported."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    return order[len(order) // 2]


def paired(store: Sequence[float], reference: Sequence[float]) -> dict[str, Any]:
    """Medians of both sides, their ratio, and the spread of the per-pair ratios."""
    ratios = [s / r for s, r in zip(store, reference, strict=False) if r > 0]
    store_median, reference_median = median(store), median(reference)
    ratio = (
        None
        if store_median is None or not reference_median
        else round(store_median / reference_median, 4)
    )
    return {
        "store_median": None if store_median is None else round(store_median, 1),
        "reference_median": None if reference_median is None else round(reference_median, 1),
        "ratio": ratio,
        "ratio_min": round(min(ratios), 4) if ratios else None,
        "ratio_max": round(max(ratios), 4) if ratios else None,
        "window_ratios": [round(r, 4) for r in ratios],
        "store_windows": [round(v, 1) for v in store],
        "reference_windows": [round(v, 1) for v in reference],
        "pairs": len(ratios),
    }


def spread_note(low: float | None, high: float | None, target: float) -> str:
    """Whether the target lies inside the per-window spread (a verdict noise could flip)."""
    if low is None or high is None:
        return ""
    if low >= target:
        return "every window pair above the target"
    if high < target:
        return "every window pair below the target"
    return "target inside the window spread: a close call"


def verdict(
    name: str,
    value: float | None,
    passed: bool,
    target: Any,
    detail: str,
    *,
    group: str,
    missing: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One acceptance entry. ``missing`` (or a None value) makes it ``not measured``."""
    if missing is not None or value is None:
        reason = missing or detail
        return {
            "name": name,
            "group": group,
            "verdict": NOT_MEASURED,
            "passed": False,
            "value": None,
            "target": target,
            "detail": reason if reason.startswith("not measured") else f"not measured: {reason}",
            **extra,
        }
    return {
        "name": name,
        "group": group,
        "verdict": PASS if passed else FAIL,
        "passed": bool(passed),
        "value": value,
        "target": target,
        "detail": detail,
        **extra,
    }


def label(check: dict[str, Any]) -> str:
    """PASS / FAIL / NOT MEASURED for a check (older results carry only ``passed``)."""
    found = check.get("verdict")
    if found is None:
        not_measured = str(check.get("detail", "")).startswith("not measured")
        found = NOT_MEASURED if not_measured else (PASS if check.get("passed") else FAIL)
    return "NOT MEASURED" if found == NOT_MEASURED else str(found)
