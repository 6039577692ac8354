"""The design's acceptance targets, checked against a finished run.

Every verdict is taken on medians of repeated windows (`bench.verdicts`): the single save
against its statements replayed raw (alternating window pairs), the scale workloads' own
checks (medians of their windows), and the peers (snapstore's medians against the peer
measured in the same run on the same server). Failures are reported with their figures,
never hidden: a missing API, a peer that could not be installed or a missing measurement is
``not measured``, which counts as a FAIL and says why.
"""

from __future__ import annotations

from typing import Any

from bench import scale_shape, verdicts
from bench.ceiling import workflow_ceiling_name
from bench.workflows import Shape

SINGLE_SAVE_FRACTION = 0.75
GROUPED_TARGET = 10_000.0
GROUPED_WORKLOADS = ("save_many", "group_commit")
PGQUEUER_FRACTION = 0.5  # snapstore's 8-worker claims/s >= half of PgQueuer's jobs/s
LANGGRAPH_FRACTION = 1.0  # snapstore's saves/s on LangGraph's shape >= its puts/s
LANGGRAPH_VERDICT_MODE = "put"  # see bench.peer_plan for why put, not step


def _rate(runs: list[dict[str, Any]], codec: str, workload: str) -> float | None:
    for r in runs:
        if r["codec"] == codec and r["workload"] == workload and "saves_per_s" in r:
            value = r["saves_per_s"]
            return None if value is None else float(value)
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


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _single_save_pairs(result: dict[str, Any], codec: str) -> dict[str, Any] | None:
    """The paired windows of ``codec``; for a result of the older one-window format, one
    pair made of its saves run and its replay ceiling."""
    found = (result.get("single_save") or {}).get(codec)
    if found is not None:
        return dict(found)
    single = _rate(result["runs"], codec, "saves")
    ceiling = (result.get("ceilings") or {}).get(workflow_ceiling_name(codec)) or {}
    raw = ceiling.get("saves_per_s")
    if single is None or raw is None:
        return None
    pairs = verdicts.paired([single], [float(raw)])
    pairs["window_s"] = (result.get("config") or {}).get("duration")
    return pairs


def single_save_check(result: dict[str, Any], codec: str) -> dict[str, Any]:
    name = (
        f"single-save path >= {SINGLE_SAVE_FRACTION:.0%} of its statements replayed raw [{codec}]"
    )
    pairs = _single_save_pairs(result, codec)
    ceilings: dict[str, Any] = result.get("ceilings") or {}
    if pairs is None or pairs.get("ratio") is None:
        missing = "single-save run" if _rate(result["runs"], codec, "saves") is None else "replay"
        errors = "; ".join((pairs or {}).get("errors") or [])
        return verdicts.verdict(
            name,
            None,
            False,
            SINGLE_SAVE_FRACTION,
            "",
            group="single-save",
            codec=codec,
            missing=f"not measured ({missing} missing{': ' + errors if errors else ''})",
        )
    ratio = float(pairs["ratio"])
    store, reference = float(pairs["store_median"]), float(pairs["reference_median"])
    note = verdicts.spread_note(pairs["ratio_min"], pairs["ratio_max"], SINGLE_SAVE_FRACTION)
    detail = (
        f"median {store:,.0f} saves/s vs its statements replayed raw median {reference:,.0f} "
        f"= {ratio:.1%} (per-pair {_pct(pairs['ratio_min'])}-{_pct(pairs['ratio_max'])} over "
        f"{pairs['pairs']} alternating window pairs of {pairs.get('window_s')} s; "
        f"need >= {SINGLE_SAVE_FRACTION:.0%}; {note})" + _versus_others(store, ceilings)
    )
    return verdicts.verdict(
        name,
        ratio,
        ratio >= SINGLE_SAVE_FRACTION,
        SINGLE_SAVE_FRACTION,
        detail,
        group="single-save",
        codec=codec,
        store=store,
        reference=reference,
        spread=[pairs["ratio_min"], pairs["ratio_max"]],
    )


def grouped_check(result: dict[str, Any], codec: str) -> dict[str, Any]:
    grouped = {w: _rate(result["runs"], codec, w) for w in GROUPED_WORKLOADS}
    measured = {w: v for w, v in grouped.items() if v is not None}
    best = max(measured.values()) if measured else None
    return verdicts.verdict(
        f"grouped path >= 10k durable saves/s [{codec}]",
        best,
        best is not None and best >= GROUPED_TARGET,
        GROUPED_TARGET,
        ", ".join(f"{w} {v:,.0f}/s" for w, v in measured.items()),
        group="grouped",
        codec=codec,
        missing=None
        if measured
        else "not measured (save_many / group_commit not run or not available)",
    )


def scale_checks(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The scale workloads' own checks, labelled; a crashed workload is not measured."""
    scale = result.get("scale") or {}
    checks: list[dict[str, Any]] = []
    for name, found in (scale.get("workloads") or {}).items():
        if found.get("failed"):
            checks.append(
                verdicts.verdict(
                    f"scale {name}",
                    None,
                    False,
                    None,
                    "",
                    group="scale",
                    workload=name,
                    missing=f"not measured (crashed: {found['failed']})",
                )
            )
            continue
        for c in found.get("checks", []):
            label = verdicts.label(c)
            verdict = verdicts.NOT_MEASURED if label == "NOT MEASURED" else label
            checks.append({**c, "group": "scale", "workload": name, "verdict": verdict})
    return checks


def _peer(result: dict[str, Any], key: str) -> tuple[dict[str, Any] | None, str | None]:
    """A peer's figures, or why there are none."""
    peers = result.get("peers")
    if not peers:
        return None, "peers not run"
    if not peers.get("enabled", True):
        return None, str(peers.get("reason") or "peers off")
    found = (peers.get("runs") or {}).get(key)
    if found is None:
        return None, f"{key} not run"
    if found.get("error") and not any(k.endswith("_per_s") for k in found):
        return None, f"{key}: {found['error']}"
    return found, None


def _dispatch(result: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    found = ((result.get("scale") or {}).get("workloads") or {}).get("dispatch_backlog")
    if found is None:
        return None, "scale dispatch_backlog not run"
    if found.get("failed"):
        return None, f"scale dispatch_backlog crashed: {found['failed']}"
    return found, None


def _peer_windows(peer: dict[str, Any], key: str) -> str:
    """ "median of 3 windows of 1.5 s, 1,800-2,100" (or "one 3.0 s window", older scripts)."""
    windows = peer.get(key) or []
    if len(windows) > 1:
        return (
            f"median of {len(windows)} windows of {peer.get('window_s')} s, "
            f"{min(windows):,.0f}-{max(windows):,.0f}"
        )
    return f"one {peer.get('seconds')} s window"


def pgqueuer_check(result: dict[str, Any]) -> dict[str, Any]:
    dispatch, why_not = _dispatch(result)
    peer, peer_why_not = _peer(result, "pgqueuer_backlog")
    states = (dispatch or {}).get("states") or {}
    backlog = (peer or {}).get("backlog")
    size = f"{int(backlog):,}" if backlog else "big"
    name = f"dispatch claims/s at the {size} backlog >= {PGQUEUER_FRACTION:.0%} of PgQueuer jobs/s"
    ours = (states.get("backlog") or {}).get("claims_per_s")
    theirs = (peer or {}).get("jobs_per_s")
    missing = why_not or peer_why_not
    if missing is None and (ours is None or not theirs):
        missing = "a figure is missing"
    if missing is not None:
        return verdicts.verdict(
            name, None, False, PGQUEUER_FRACTION, "", group="peer", missing=missing
        )
    assert ours is not None
    assert theirs is not None
    ratio = float(ours) / float(theirs)
    windows = (states.get("backlog") or {}).get("claims_per_s_windows") or []
    small_ours = (states.get("small") or {}).get("claims_per_s")
    small_peer, _ = _peer(result, "pgqueuer_small")
    small_theirs = (small_peer or {}).get("jobs_per_s")
    errors = (peer or {}).get("errors")
    detail = (
        f"snapstore {float(ours):,.0f} claims/s (8 workers, median of {len(windows)} windows"
        + (f", {min(windows):,.0f}-{max(windows):,.0f}" if windows else "")
        + f") vs PgQueuer {float(theirs):,.0f} jobs/s ({(peer or {}).get('concurrency')} "
        f"QueueManagers, batch {(peer or {}).get('batch_size')}, "
        f"{_peer_windows(peer or {}, 'jobs_per_s_windows')}) = {ratio:.1%} "
        f"(need >= {PGQUEUER_FRACTION:.0%}); at the small backlog: snapstore "
        f"{'-' if small_ours is None else f'{float(small_ours):,.0f}'} vs PgQueuer "
        f"{'-' if small_theirs is None else f'{float(small_theirs):,.0f}'}"
        + (f"; PgQueuer errors: {errors}" if errors else "")
    )
    return verdicts.verdict(
        name,
        ratio,
        ratio >= PGQUEUER_FRACTION,
        PGQUEUER_FRACTION,
        detail,
        group="peer",
        store=float(ours),
        reference=float(theirs),
    )


def _shape(result: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """snapstore's pooled figure on LangGraph's shape (`bench.scale_shape`), or why none."""
    peers = result.get("peers")
    if not peers:
        return None, "peers not run"
    if not peers.get("enabled", True):
        return None, str(peers.get("reason") or "peers off")
    found = peers.get("snapstore_shape")
    if not found:
        return None, "snapstore on the LangGraph shape not run"
    if found.get("saves_per_s") is None:
        return None, f"snapstore on the LangGraph shape: {found.get('error') or 'no window'}"
    return found, None


def _halves_text(shape: dict[str, Any]) -> str:
    """ "before LangGraph 1,900, after 1,850" (each half's median)."""
    parts = []
    for name, half in (shape.get("halves") or {}).items():
        rate = half.get("saves_per_s")
        parts.append(f"{name} LangGraph {'-' if rate is None else f'{float(rate):,.0f}'}")
    return ", ".join(parts)


def langgraph_check(result: dict[str, Any]) -> dict[str, Any]:
    """snapstore's single save on LangGraph's checkpoint shape vs PostgresSaver's put, both
    at ``--concurrency`` threads and measured side by side in time (one verdict: the shape
    run uses the json codec, whatever codecs the rest of the run measured)."""
    threads = (result.get("config") or {}).get("concurrency")
    codec = scale_shape.CODEC
    name = (
        f"single save >= LangGraph PostgresSaver {LANGGRAPH_VERDICT_MODE}/s at {threads} "
        f"threads [{codec}]"
    )
    peer, peer_missing = _peer(result, f"langgraph_{LANGGRAPH_VERDICT_MODE}")
    shape, shape_missing = _shape(result)
    ours = (shape or {}).get("saves_per_s")
    theirs = (peer or {}).get("puts_per_s")
    reasons = [r for r in (peer_missing, shape_missing) if r]
    if not reasons and not theirs:
        reasons.append("a figure is missing")
    if reasons:
        return verdicts.verdict(
            name,
            None,
            False,
            LANGGRAPH_FRACTION,
            "",
            group="peer",
            codec=codec,
            missing="; ".join(dict.fromkeys(reasons)),  # peers off: said once
        )
    assert shape is not None
    assert peer is not None
    assert ours is not None
    assert theirs is not None
    ratio = float(ours) / float(theirs)
    windows = shape.get("windows") or []
    form = shape.get("shape") or {}
    step, _ = _peer(result, "langgraph_step")
    step_text = (
        f"; step mode (put_writes + put): {float(step['steps_per_s']):,.0f} steps/s, "
        f"{float(step['puts_per_s']):,.0f} puts/s"
        if step and step.get("steps_per_s") is not None
        else ""
    )
    saves = _rate(result["runs"], codec, "saves")
    saves_text = (
        f"; for reference, the saves workload ({codec}, {Shape().steps} steps adding one "
        f"~50 B output each): {saves:,.0f} saves/s"
        if saves is not None
        else ""
    )
    detail = (
        f"snapstore {float(ours):,.0f} saves/s on that shape ({threads} threads, "
        f"{form.get('channels')} outputs of {form.get('output_bytes')} B, one replaced per "
        f"step, {form.get('steps')} steps per workflow; median of {len(windows)} windows of "
        f"{shape.get('window_s')} s"
        + (f", {min(windows):,.0f}-{max(windows):,.0f}" if windows else "")
        + f"; {_halves_text(shape)}) vs LangGraph {float(theirs):,.0f} puts/s "
        f"({_peer_windows(peer, 'puts_per_s_windows')}, {peer.get('channels')} outputs of "
        f"{peer.get('value_blob_bytes')} B, {peer.get('steps_per_thread_id')} steps per "
        f"thread_id) = {ratio:.1%} (need >= {LANGGRAPH_FRACTION:.0%})" + step_text + saves_text
    )
    return verdicts.verdict(
        name,
        ratio,
        ratio >= LANGGRAPH_FRACTION,
        LANGGRAPH_FRACTION,
        detail,
        group="peer",
        codec=codec,
        store=float(ours),
        reference=float(theirs),
    )


def check(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every verdict: name, group, verdict (PASS/FAIL/not measured), passed, value, target,
    detail; ``passed`` is False for ``not measured``."""
    codecs: list[str] = result["config"]["codecs"]
    checks: list[dict[str, Any]] = []
    for codec in codecs:
        checks.append(single_save_check(result, codec))
        checks.append(grouped_check(result, codec))
    checks += scale_checks(result)
    if "peers" in result:
        checks.append(pgqueuer_check(result))
        checks.append(langgraph_check(result))
    return checks
