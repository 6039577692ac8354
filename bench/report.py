"""Turns a result dict into the artefacts: JSON, markdown, a PNG chart, a stdout summary."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from bench import verdicts
from bench.acceptance import GROUPED_TARGET, SINGLE_SAVE_FRACTION
from bench.environment import DURABILITY_KEYS


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}"
    return str(value)


def _lat(block: dict[str, Any] | None) -> str:
    if not block:
        return "-"
    return f"{block['p50']:.1f} / {block['p95']:.1f} / {block['p99']:.1f}"


def _drops(run: dict[str, Any]) -> str:
    wakeups = run.get("wakeups")
    if not wakeups:
        return "-"
    rate = wakeups.get("drop_rate")
    return f"{_fmt(wakeups.get('dropped'))} ({rate:.1%})" if rate is not None else "-"


RUN_COLUMNS = (
    "codec",
    "workload",
    "mode",
    "saves/s",
    "workflows/s",
    "workflow ms p50/p95/p99",
    "pickup ms p50/p95/p99",
    "wakeup drops",
    "branches at once",
    "blob B",
    "WAL B/save",
    "errors",
)


def unmeasured(run: dict[str, Any]) -> str | None:
    """Why a run has no figures ("skipped: ..." for a missing API, "FAILED: ..."), or None."""
    if run.get("skipped"):
        return f"skipped: {run['skipped']}"
    if run.get("failed"):
        return f"FAILED: {run['failed']}"
    return None


def run_row(run: dict[str, Any]) -> list[str]:
    reason = unmeasured(run)
    if reason is not None:
        return [run["codec"], run["workload"], reason] + ["-"] * (len(RUN_COLUMNS) - 3)
    errors = sum(run["errors"].values())
    return [
        run["codec"],
        run["workload"],
        run["mode"],
        _fmt(run["saves_per_s"]),
        _fmt(run["workflows_per_s"], 1),
        _lat(run["workflow_latency_ms"]),
        _lat(run["pickup_latency_ms"]),
        _drops(run),
        _fmt(run.get("branch_concurrency"), 2),
        _fmt(run["blob_bytes_mean"]),
        _fmt(run["wal_bytes_per_save"]),
        str(errors) if errors else "0",
    ]


def ceiling_rows(ceilings: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, c in ceilings.items():
        if c is None:
            continue
        width = c.get("threads", c.get("clients"))
        rate = _fmt(c.get("saves_per_s")) if "saves_per_s" in c else "error: " + c.get("error", "?")
        rows.append([name, str(width), str(c.get("saves_per_commit", 1)), rate])
    return rows


def _table(header: tuple[str, ...] | list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0%}"


def _windows(values: list[Any] | None) -> str:
    return ", ".join(_fmt(v) for v in values or []) or "-"


def single_save_section(result: dict[str, Any]) -> list[str]:
    """The single-save verdict's figures: store and replay medians, ratio, spread."""
    found: dict[str, Any] = result.get("single_save") or {}
    if not found:
        return []
    rows = [
        [
            codec,
            _fmt(p.get("store_median")),
            _fmt(p.get("reference_median")),
            _pct(p.get("ratio")),
            f"{_pct(p.get('ratio_min'))}-{_pct(p.get('ratio_max'))}",
            f">= {SINGLE_SAVE_FRACTION:.0%}",
            _windows(p.get("store_windows")),
            _windows(p.get("reference_windows")),
            "; ".join(p.get("errors") or []) or "-",
        ]
        for codec, p in found.items()
    ]
    window = next(iter(found.values())).get("window_s")
    return [
        "## Single save vs its statements replayed raw (alternating windows)",
        "",
        f"Store (`saves` workload) and reference (`raw_workflow_<codec>`) windows of {window} s "
        "alternate (S R, R S, ...), each after the same warm-up, ANALYZE and CHECKPOINT; the "
        "ratio is median / median, the spread the min-max of the per-pair ratios.",
        "",
        _table(
            (
                "codec",
                "store saves/s (median)",
                "replay saves/s (median)",
                "ratio",
                "per-pair spread",
                "target",
                "store windows",
                "replay windows",
                "errors",
            ),
            rows,
        ),
        "",
    ]


def _reference_text(reference: Any) -> str:
    if reference is None:
        return "-"
    if isinstance(reference, dict):
        return ", ".join(f"{k} {_fmt(v, 1)}" for k, v in reference.items())
    return _fmt(reference, 1)


def scale_figure_rows(result: dict[str, Any]) -> list[list[str]]:
    """workload | figure | value | unit | target | reference, for every scale figure."""
    rows: list[list[str]] = []
    workloads = (result.get("scale") or {}).get("workloads") or {}
    for name, found in workloads.items():
        if found.get("failed"):
            rows.append([name, "FAILED", found["failed"], "-", "-", "-"])
            continue
        for key, fig in (found.get("figures") or {}).items():
            rows.append(
                [
                    name,
                    key,
                    _fmt(fig.get("value"), 1),
                    str(fig.get("unit", "")),
                    str(fig.get("target") or "-"),
                    _reference_text(fig.get("reference")),
                ]
            )
    return rows


def scale_section(result: dict[str, Any]) -> list[str]:
    scale = result.get("scale") or {}
    if not scale.get("workloads"):
        return []
    elapsed = ", ".join(f"{n} {w.get('elapsed_s')} s" for n, w in scale["workloads"].items())
    return [
        f"## Scale workloads (size {scale.get('size')}, {scale.get('repeats')} windows per "
        "figure, codec json)",
        "",
        f"Time: {elapsed}.",
        "",
        _table(
            ("workload", "figure", "value", "unit", "target", "reference"),
            scale_figure_rows(result),
        ),
        "",
    ]


PEER_FIGURES = {
    "pgqueuer": ("jobs_per_s", "jobs/s", "dequeue_ms_p50", "dequeue_ms_p99"),
    "langgraph": ("puts_per_s", "puts/s", "put_ms_p50", "put_ms_p99"),
}


def _shape_row(shape: dict[str, Any]) -> list[str]:
    """snapstore on LangGraph's checkpoint shape, the row LangGraph's rows are held against."""
    form = shape.get("shape") or {}
    halves = ", ".join(
        f"{name} {_fmt(half.get('saves_per_s'))}"
        + (f" (error: {half['error'][:200]})" if half.get("error") else "")
        + (f" (errors {half['errors']})" if half.get("errors") else "")
        for name, half in (shape.get("halves") or {}).items()
    )
    windows = shape.get("windows") or []
    return [
        "snapstore_shape",
        f"{_fmt(shape.get('saves_per_s'))} saves/s",
        "- / -",
        f"{shape.get('codec')}, {shape.get('threads')} threads, {form.get('channels')} outputs "
        f"x {form.get('output_bytes')} B, {form.get('steps')} steps",
        f"median of {len(windows)} x {shape.get('window_s')} s ({_windows(windows)}); "
        f"halves around LangGraph: {halves}",
    ]


def peer_rows(result: dict[str, Any]) -> list[list[str]]:
    """One row per peer measurement: its rate and latency, or the reason it is missing;
    first snapstore on LangGraph's shape, so it sits next to LangGraph's rows."""
    peers = result.get("peers") or {}
    rows: list[list[str]] = []
    if peers.get("snapstore_shape"):
        rows.append(_shape_row(peers["snapstore_shape"]))
    for key, found in (peers.get("runs") or {}).items():
        peer = str(found.get("peer") or key.split("_")[0])
        rate_key, unit, p50, p99 = PEER_FIGURES.get(peer, ("-", "-", "-", "-"))
        shape = (
            f"backlog {_fmt(found.get('backlog'))}, {found.get('concurrency')} managers, "
            f"batch {found.get('batch_size')}"
            if peer == "pgqueuer"
            else f"mode {found.get('mode')}, {found.get('concurrency')} threads, "
            f"{found.get('channels')} outputs x {found.get('value_blob_bytes')} B"
        )
        extra = ""
        if found.get("steps_per_s") is not None:
            extra = f"; {_fmt(found['steps_per_s'])} steps/s"
        if found.get("error"):
            rows.append([key, "-", "-", "-", f"error: {found['error'][:300]}"])
            continue
        rows.append(
            [
                key,
                f"{_fmt(found.get(rate_key))} {unit}{extra}",
                f"{_fmt(found.get(p50), 2)} / {_fmt(found.get(p99), 2)}",
                shape,
                _peer_window_text(found)
                + f", install {found.get('install_s')} s"
                + (f", errors {found['errors']}" if found.get("errors") else ""),
            ]
        )
    return rows


def _peer_window_text(found: dict[str, Any]) -> str:
    windows = found.get("jobs_per_s_windows") or found.get("puts_per_s_windows") or []
    if len(windows) > 1:
        return f"median of {len(windows)} x {found.get('window_s')} s ({_windows(windows)})"
    return f"{found.get('seconds')} s window"


def peer_section(result: dict[str, Any]) -> list[str]:
    peers = result.get("peers")
    if peers is None:
        return []
    lines = ["## Peers (same run, same server)", ""]
    if not peers.get("enabled", True):
        lines += [f"Not measured: {peers.get('reason')}.", ""]
    else:
        lines += [
            _table(("peer", "rate", "latency ms p50 / p99", "shape", "notes"), peer_rows(result)),
            "",
        ]
    checks = [c for c in result.get("acceptance", []) if c.get("group") == "peer"]
    if checks:
        lines += [
            _table(
                ("verdict", "snapstore", "peer", "ratio", "target", "check"),
                [
                    [
                        verdicts.label(c),
                        _fmt(c.get("store")),
                        _fmt(c.get("reference")),
                        _pct(c.get("value")),
                        f">= {_pct(c.get('target'))}",
                        c["name"],
                    ]
                    for c in checks
                ],
            ),
            "",
        ]
    return lines


def summary_extras(result: dict[str, Any]) -> list[str]:
    """Single-save medians, scale failures and peer figures for the stdout summary."""
    lines: list[str] = []
    for codec, p in (result.get("single_save") or {}).items():
        lines.append(
            f"single save [{codec}]: median {_fmt(p.get('store_median'))}/s vs replay "
            f"{_fmt(p.get('reference_median'))}/s = {_pct(p.get('ratio'))} "
            f"(pairs {_pct(p.get('ratio_min'))}-{_pct(p.get('ratio_max'))}, n={p.get('pairs')})"
        )
    scale = result.get("scale") or {}
    if scale.get("workloads"):
        lines.append(
            f"scale (size {scale.get('size')}, {scale.get('repeats')} windows): "
            + ", ".join(
                f"{n} {'FAILED' if w.get('failed') else str(w.get('elapsed_s')) + 's'}"
                for n, w in scale["workloads"].items()
            )
        )
    peers = result.get("peers")
    if peers is not None and not peers.get("enabled", True):
        lines.append(f"peers: not measured ({peers.get('reason')})")
    elif peers is not None:
        lines.append(
            "peers: "
            + "; ".join(f"{r[0]} {r[1] if r[1] != '-' else r[4]}" for r in peer_rows(result))
        )
    return lines


def _settings_line(result: dict[str, Any]) -> str:
    settings = result["environment"]["server"]["settings"]
    return ", ".join(f"{k}={settings.get(k, '?')}" for k in settings)


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    machine, server = env["machine"], env["server"]
    lines = [
        f"# snapstore benchmark {result['started_at']}",
        "",
        f"- PostgreSQL {server['version']}: {_settings_line(result)}",
        f"- Machine: {machine['cpu_model']}, {machine['cpu_count']} cores, "
        f"{machine['ram_gb']} GB RAM, {machine['os']}, Python {machine['python']}",
        "- Packages: "
        + ", ".join(f"{k} {v}" for k, v in machine["packages"].items() if v is not None),
        f"- Config: {json.dumps(result['config'])}",
        f"- APIs available: {json.dumps(result['capabilities'])}",
        "",
        "## Workloads",
        "",
        _table(RUN_COLUMNS, [run_row(r) for r in result["runs"]]),
        "",
        "## Ceilings (same statement, pre-encoded params)",
        "",
        _table(
            ("reference", "threads", "saves/commit", "saves/s"), ceiling_rows(result["ceilings"])
        ),
        "",
    ]
    lines += single_save_section(result) + scale_section(result) + peer_section(result)
    lines += ["## Acceptance (verdicts on medians of repeated windows)", ""]
    lines += [f"- **{verdicts.label(c)}** {c['name']}: {c['detail']}" for c in result["acceptance"]]
    if result.get("timings"):
        lines += ["", "## Time", ""]
        lines += [f"- {k}: {v} s" for k, v in result["timings"].items()]
        lines += [
            f"- total: {result.get('elapsed_s')} s "
            f"({result.get('elapsed_without_installs_s')} s without peer installs)"
        ]
    notes = [(r["codec"], r["workload"], r["notes"]) for r in result["runs"] if r.get("notes")]
    if notes:
        lines += ["", "## Notes (counted events that are not errors)", ""]
        lines += [f"- {c}/{w}: {n}" for c, w, n in notes]
    errors = [
        (r["codec"], r["workload"], r["first_errors"])
        for r in result["runs"]
        if r.get("first_errors")
    ]
    if errors:
        lines += ["", "## Errors (first of each type)", ""]
        lines += [f"- {c}/{w}: {e}" for c, w, e in errors]
    return "\n".join(lines) + "\n"


def summary(result: dict[str, Any], paths: list[Path]) -> str:
    """A short plain-text summary for stdout: what ran, the key numbers, the verdicts."""
    server = result["environment"]["server"]
    settings = server["settings"]
    lines = [
        "",
        f"PostgreSQL {server['version']} | "
        + " ".join(f"{k}={settings.get(k, '?')}" for k in DURABILITY_KEYS),
        f"{'codec':8} {'workload':13} {'saves/s':>9} {'wf/s':>8} {'wf p50/p95/p99 ms':>22} "
        f"{'pickup p95':>10} {'drops':>6} {'blob B':>7} {'WAL B/save':>10}  mode",
    ]
    for r in result["runs"]:
        reason = unmeasured(r)
        if reason is not None:
            lines.append(f"{r['codec']:8} {r['workload']:13} {reason}")
            continue
        pickup = r["pickup_latency_ms"]
        drops = (r.get("wakeups") or {}).get("dropped")
        errs = sum(r["errors"].values())
        lines.append(
            f"{r['codec']:8} {r['workload']:13} {_fmt(r['saves_per_s']):>9} "
            f"{_fmt(r['workflows_per_s'], 1):>8} {_lat(r['workflow_latency_ms']):>22} "
            f"{_fmt(pickup['p95'] if pickup else None, 1):>10} {_fmt(drops):>6} "
            f"{_fmt(r['blob_bytes_mean']):>7} {_fmt(r['wal_bytes_per_save']):>10}  {r['mode']}"
            + (f"  errors={errs}" if errs else "")
            + (
                f"  branches at once={r['branch_concurrency']}"
                if r.get("branch_concurrency")
                else ""
            )
        )
    lines.append(
        "ceilings: "
        + "; ".join(
            f"{row[0]} x{row[1]} ({row[2]}/commit) {row[3]}/s"
            for row in ceiling_rows(result["ceilings"])
        )
    )
    lines += summary_extras(result)
    for c in result["acceptance"]:
        lines.append(f"{verdicts.label(c)}  {c['name']}: {c['detail']}")
    if result.get("elapsed_s") is not None:
        lines.append(
            f"elapsed {result['elapsed_s']} s ({result.get('elapsed_without_installs_s')} s "
            "without peer venv installs)"
        )
    lines += [f"WARN  {w}" for w in result.get("warnings", [])]
    lines += ["written: " + ", ".join(str(p) for p in paths)]
    return "\n".join(lines)


_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")


def _first_number(value: Any) -> float | None:
    """A reference (a number, or a dict of them) or a target text (">= 20,000") as a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dict):
        for v in value.values():
            found = _first_number(v)
            if found is not None:
                return found
        return None
    if isinstance(value, str) and "%" not in value and "x" not in value and "/" not in value:
        match = _NUMBER.search(value)
        return float(match.group().replace(",", "")) if match else None
    return None


def relative_figures(result: dict[str, Any]) -> list[tuple[str, float, str]]:
    """(label, value / reference (or / numeric target), text) for the chart's scale panel."""
    out: list[tuple[str, float, str]] = []
    for name, found in ((result.get("scale") or {}).get("workloads") or {}).items():
        for key, fig in (found.get("figures") or {}).items():
            value = fig.get("value")
            base = _first_number(fig.get("reference"))
            against = "ref"
            if base is None:
                base, against = _first_number(fig.get("target")), "target"
            if value is None or not base or float(value) / base <= 0:
                continue
            text = (
                f"{_fmt(value, 1)} {fig.get('unit', '')} vs {against} {_fmt(base, 1)}"
                f" (target {fig.get('target') or '-'})"
            )
            out.append((f"{name}: {key}", float(value) / base, text))
    return out


def chart(result: dict[str, Any], path: Path) -> None:
    """Saves/s per workload and codec with the ceilings; workflow p95; the single-save ratio
    with its spread against the target; peers; every scale figure against its reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in result["runs"] if unmeasured(r) is None]
    codecs = list(dict.fromkeys(r["codec"] for r in runs))
    workloads = list(dict.fromkeys(r["workload"] for r in runs))
    scale_rows = relative_figures(result)
    fig = plt.figure(figsize=(14, 10 + 0.28 * len(scale_rows)))
    grid = fig.add_gridspec(3, 2, height_ratios=[5, 4, max(2.0, 0.28 * len(scale_rows))])
    ax_saves, ax_lat = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    ax_single, ax_peers = fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])
    ax_scale = fig.add_subplot(grid[2, :])
    width = 0.8 / max(len(codecs), 1)
    for i, codec in enumerate(codecs):
        by_workload = {r["workload"]: r for r in runs if r["codec"] == codec}
        xs = [j + i * width for j in range(len(workloads))]
        ax_saves.bar(
            xs,
            [by_workload.get(w, {}).get("saves_per_s") or 0 for w in workloads],
            width,
            label=codec,
        )
        p95 = [
            ((by_workload.get(w) or {}).get("workflow_latency_ms") or {}).get("p95", 0)
            for w in workloads
        ]
        ax_lat.bar(xs, p95, width, label=codec)
    for name, style in (("raw_single", "--"), ("raw_batch", ":"), ("pgbench_single", "-.")):
        c = result["ceilings"].get(name) or {}
        if c.get("saves_per_s"):
            ax_saves.axhline(c["saves_per_s"], linestyle=style, color="grey", linewidth=1)
            ax_saves.annotate(name, (len(workloads) - 0.5, c["saves_per_s"]), fontsize=7)
    ax_saves.axhline(GROUPED_TARGET, linestyle=":", color="red", linewidth=1)
    ax_saves.annotate("grouped target", (len(workloads) - 0.5, GROUPED_TARGET), fontsize=7)
    centre = [j + 0.4 - width / 2 for j in range(len(workloads))]
    for ax, title in (
        (ax_saves, "saves/s (lines: ceilings)"),
        (ax_lat, "workflow latency p95 (ms)"),
    ):
        ax.set_xticks(centre, workloads, rotation=30)
        ax.set_title(title)
        if codecs:
            ax.legend()
    _single_panel(ax_single, result)
    _peer_panel(ax_peers, result)
    _scale_panel(ax_scale, scale_rows, result)
    server = result["environment"]["server"]
    settings = server["settings"]
    fig.suptitle(
        f"snapstore {result['started_at']}  PostgreSQL {server['version']} "
        + " ".join(f"{k}={settings.get(k)}" for k in DURABILITY_KEYS),
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _single_panel(ax: Any, result: dict[str, Any]) -> None:
    pairs = {c: p for c, p in (result.get("single_save") or {}).items() if p.get("ratio")}
    names = list(pairs)
    ratios = [float(pairs[c]["ratio"]) for c in names]
    low = [r - float(pairs[c]["ratio_min"] or r) for c, r in zip(names, ratios, strict=True)]
    high = [float(pairs[c]["ratio_max"] or r) - r for c, r in zip(names, ratios, strict=True)]
    ax.bar(names, ratios, yerr=[low, high], capsize=6, color="tab:blue")
    for i, c in enumerate(names):
        ax.annotate(
            f"{pairs[c]['store_median']:,.0f} / {pairs[c]['reference_median']:,.0f}",
            (i, ratios[i]),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax.axhline(SINGLE_SAVE_FRACTION, linestyle="--", color="red", linewidth=1)
    ax.annotate("target", (len(names) - 0.5, SINGLE_SAVE_FRACTION), fontsize=7)
    ax.set_ylim(0, 1.15 * max([1.0, *[r + h for r, h in zip(ratios, high, strict=True)]]))
    ax.set_title("single save / its statements replayed raw (median; bars: pair min-max)")


def _peer_panel(ax: Any, result: dict[str, Any]) -> None:
    checks = [c for c in result.get("acceptance", []) if c.get("group") == "peer"]
    names = [re.sub(r"^(.{0,38}).*?(\[.*\])?$", r"\1\2", c["name"]) for c in checks]
    values = [float(c["value"]) if c.get("value") is not None else 0.0 for c in checks]
    colors = ["tab:green" if c.get("passed") else "tab:red" for c in checks]
    ys = list(range(len(checks)))
    ax.barh(ys, values, color=colors)
    for y, c in zip(ys, checks, strict=True):
        text = (
            f"{_fmt(c.get('store'))} vs {_fmt(c.get('reference'))}"
            if c.get("value") is not None
            else "not measured"
        )
        ax.annotate(text, (max(values[y], 0.02), y), va="center", fontsize=7)
        target = c.get("target")
        if isinstance(target, int | float):
            ax.plot([target, target], [y - 0.4, y + 0.4], color="red", linewidth=1.5)
    ax.set_yticks(ys, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_title("peers: snapstore / peer (tick: target; red: FAIL or not measured)")


def _scale_panel(ax: Any, rows: list[tuple[str, float, str]], result: dict[str, Any]) -> None:
    scale = result.get("scale") or {}
    if not rows:
        ax.set_axis_off()
        ax.set_title("scale figures: none measured")
        return
    ys = list(range(len(rows)))
    values = [r[1] for r in rows]
    ax.hlines(ys, [1.0] * len(ys), values, color="tab:purple", linewidth=2)
    ax.scatter(values, ys, color="tab:purple", zorder=3)
    for y, (_label, value, text) in zip(ys, rows, strict=True):
        ax.annotate(f"  {text}", (value, y), va="center", fontsize=7)
    low, high = min([*values, 1.0]), max([*values, 1.0])
    ax.set_xlim(low / 1.5, high * 6)
    ax.axvline(1.0, color="grey", linewidth=1)
    ax.set_yticks(ys, [r[0] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_title(
        f"scale figures (size {scale.get('size')}): value / reference (or / numeric target), "
        "log scale; labels: value, reference, target"
    )


def write(result: dict[str, Any], out: Path, stem: str) -> list[Path]:
    """JSON + markdown + PNG under ``out``, plus ``latest.*`` copies for quick access."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json", out / f"{stem}.md", out / f"{stem}.png"]
    paths[0].write_text(json.dumps(result, indent=2, default=str) + "\n")
    paths[1].write_text(markdown(result))
    chart(result, paths[2])
    for p in paths:
        (out / f"latest{p.suffix}").write_bytes(p.read_bytes())
    return paths
