"""Turns a result dict into the artefacts: JSON, markdown, a PNG chart, a stdout summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.acceptance import GROUPED_TARGET
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
        return [run["codec"], run["workload"], reason] + ["-"] * 8
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
        "## Acceptance",
        "",
    ]
    lines += [
        f"- **{'PASS' if c['passed'] else 'FAIL'}** {c['name']}: {c['detail']}"
        for c in result["acceptance"]
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
        )
    lines.append(
        "ceilings: "
        + "; ".join(
            f"{row[0]} x{row[1]} ({row[2]}/commit) {row[3]}/s"
            for row in ceiling_rows(result["ceilings"])
        )
    )
    for c in result["acceptance"]:
        lines.append(f"{'PASS' if c['passed'] else 'FAIL'}  {c['name']}: {c['detail']}")
    lines += [f"WARN  {w}" for w in result.get("warnings", [])]
    lines += ["written: " + ", ".join(str(p) for p in paths)]
    return "\n".join(lines)


def chart(result: dict[str, Any], path: Path) -> None:
    """Saves/s per workload and codec, with the raw ceilings as reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in result["runs"] if unmeasured(r) is None]
    codecs = list(dict.fromkeys(r["codec"] for r in runs))
    workloads = list(dict.fromkeys(r["workload"] for r in runs))
    fig, (ax_saves, ax_lat) = plt.subplots(1, 2, figsize=(13, 5))
    width = 0.8 / max(len(codecs), 1)
    for i, codec in enumerate(codecs):
        by_workload = {r["workload"]: r for r in runs if r["codec"] == codec}
        xs = [j + i * width for j in range(len(workloads))]
        ax_saves.bar(
            xs,
            [by_workload.get(w, {}).get("saves_per_s", 0) for w in workloads],
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
        ax.legend()
    server = result["environment"]["server"]
    settings = server["settings"]
    fig.suptitle(
        f"snapstore {result['started_at']}  PostgreSQL {server['version']} "
        + " ".join(f"{k}={settings.get(k)}" for k in DURABILITY_KEYS),
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
