"""The bench's verdict logic, report rendering and run plan on synthetic results (no server).

Medians of repeated windows decide; a peer that could not be installed or a figure that
was not measured is "not measured", a FAIL with the reason, never a silent pass.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from bench import acceptance, cli, compare, peer_plan, peers, report, scale_shape, verdicts

INSTALL_ERROR = "installing ['pgqueuer==1.6.0'] into .venv-peers/pgqueuer failed: no network"


def _run(codec: str, workload: str, saves: float) -> dict[str, Any]:
    return {
        "codec": codec,
        "workload": workload,
        "mode": "in-process",
        "saves": int(saves),
        "saves_per_s": saves,
        "workflows": 1,
        "workflows_per_s": saves / 6,
        "workflow_latency_ms": {"count": 1, "p50": 1.0, "p95": 2.0, "p99": 3.0, "max": 4.0},
        "pickup_latency_ms": None,
        "wakeups": None,
        "blob_bytes_mean": 500.0,
        "wal_bytes_per_save": 1500.0,
        "errors": {},
        "notes": {},
        "first_errors": {},
    }


def _result(
    store: list[float],
    reference: list[float],
    *,
    peers_runs: dict[str, Any] | None = None,
    claims: float | None = 1000.0,
    shape: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A finished run in the suite's shape, one codec, small enough to reason about."""
    pairs = verdicts.paired(store, reference)
    pairs.update(order=["store", "reference"] * len(store), window_s=1.5, errors=[])
    dispatch = {
        "workload": "dispatch_backlog",
        "states": {
            "small": {"claims_per_s": 1100.0},
            "backlog": {"claims_per_s": claims, "claims_per_s_windows": [990.0, 1000.0, 1010.0]},
        },
        "figures": {
            "claims_per_s_backlog": {
                "value": claims,
                "unit": "claims/s",
                "target": ">= 1/2 of small",
                "reference": {"small": 1100.0},
            },
            "p99_ms_backlog": {"value": 5.5, "unit": "ms", "target": "< 10"},
        },
        "checks": [
            {
                "name": "dispatch p99 < 10 ms [backlog]",
                "passed": True,
                "value": 5.5,
                "target": "< 10 ms",
                "detail": "p99 5.5 ms",
            },
            {
                "name": "dispatch claims/s within 2x [backlog]",
                "passed": False,
                "value": None,
                "target": ">= 50%",
                "detail": "not measured: no windows",
            },
        ],
    }
    return {
        "started_at": "2026-01-01T00:00:00Z",
        "config": {"codecs": ["json"], "concurrency": 8, "duration": 2.5},
        "environment": {
            "machine": {
                "cpu_model": "test",
                "cpu_count": 2,
                "ram_gb": 4,
                "os": "linux",
                "python": "3.11",
                "packages": {"psycopg": "3.2"},
            },
            "server": {
                "version": "15",
                "settings": {"fsync": "on", "synchronous_commit": "on"},
            },
        },
        "capabilities": {},
        "runs": [
            _run("json", "saves", pairs["store_median"] or 0.0),
            _run("json", "save_many", 12e3),
        ],
        "ceilings": {
            "raw_single": {"threads": 8, "saves_per_s": 2400.0},
            "raw_workflow_json": {"threads": 8, "saves_per_s": pairs["reference_median"]},
        },
        "single_save": {"json": pairs},
        "scale": {
            "size": "default",
            "repeats": 3,
            "workloads": {
                "dispatch_backlog": dispatch,
                "retention": {"workload": "retention", "failed": "RuntimeError('boom')"},
            },
        },
        "peers": {
            "enabled": True,
            "reason": None,
            "runs": peers_runs or {},
            "snapstore_shape": SHAPE if shape is None else shape,
        },
    }


PGQ_BACKLOG = {
    "peer": "pgqueuer",
    "backlog": 1_000_000,
    "jobs_per_s": 1800.0,
    "jobs_per_s_windows": [1700.0, 1800.0, 1900.0],
    "window_s": 1.5,
    "concurrency": 8,
    "batch_size": 10,
    "seconds": 3.0,
    "dequeue_ms_p50": 2.0,
    "dequeue_ms_p99": 9.0,
    "errors": [],
}
LG_PUT = {
    "peer": "langgraph",
    "mode": "put",
    "puts_per_s": 1500.0,
    "seconds": 3.0,
    "concurrency": 8,
    "channels": 10,
    "steps_per_thread_id": 10,
    "value_blob_bytes": 200,
    "put_ms_p50": 4.0,
    "put_ms_p99": 12.0,
}
LG_STEP = {**LG_PUT, "mode": "step", "puts_per_s": 900.0, "steps_per_s": 880.0}
# snapstore on LangGraph's shape: halves of 3 windows before and after the LangGraph runs.
SHAPE = scale_shape.pooled(
    {
        "before": {
            "threads": 8,
            "window_s": 1.5,
            "saves_per_s": 1650.0,
            "windows": [1600.0, 1650.0, 1700.0],
        },
        "after": {
            "threads": 8,
            "window_s": 1.5,
            "saves_per_s": 1550.0,
            "windows": [1500.0, 1550.0, 1580.0],
        },
    }
)


def _by_name(checks: list[dict[str, Any]], fragment: str) -> dict[str, Any]:
    return next(c for c in checks if fragment in c["name"])


def test_paired_windows_give_medians_ratio_and_spread() -> None:
    found = verdicts.paired([100.0, 80.0, 90.0], [100.0, 100.0, 120.0])
    assert found["store_median"] == 90.0
    assert found["reference_median"] == 100.0
    assert found["ratio"] == 0.9
    assert found["ratio_min"] == 0.75
    assert found["ratio_max"] == 1.0
    assert found["pairs"] == 3
    assert verdicts.paired([], [])["ratio"] is None
    assert verdicts.median_index([3.0, 1.0, 2.0]) == 2


def test_single_save_verdict_is_on_the_median_ratio_not_one_window() -> None:
    # One window pair far below 75% (a burst on the machine) does not fail the median.
    passing = acceptance.check(_result([2000.0, 1200.0, 2100.0], [2500.0, 2600.0, 2550.0]))
    single = _by_name(passing, "single-save path")
    assert single["verdict"] == "PASS"
    assert single["passed"] is True
    assert single["value"] == pytest.approx(2000.0 / 2550.0, abs=1e-4)
    assert "target inside the window spread" in single["detail"]
    failing = acceptance.check(_result([1500.0, 1600.0, 1550.0], [2500.0, 2600.0, 2550.0]))
    single = _by_name(failing, "single-save path")
    assert single["verdict"] == "FAIL"
    assert single["passed"] is False
    assert "every window pair below the target" in single["detail"]


def test_missing_single_save_windows_are_not_measured() -> None:
    result = _result([], [])
    result["runs"] = [r for r in result["runs"] if r["workload"] != "saves"]
    single = _by_name(acceptance.check(result), "single-save path")
    assert single["verdict"] == "not measured"
    assert single["passed"] is False
    assert single["detail"].startswith("not measured")


def test_peer_install_failure_is_not_measured_with_the_reason() -> None:
    runs = {
        "pgqueuer_backlog": {"peer": "pgqueuer", "error": INSTALL_ERROR},
        "langgraph_put": {"peer": "langgraph", "error": "installing langgraph failed: offline"},
    }
    checks = acceptance.check(_result([2000.0], [2500.0], peers_runs=runs))
    for fragment, why in (("PgQueuer", "no network"), ("LangGraph", "offline")):
        found = _by_name(checks, fragment)
        assert found["verdict"] == "not measured"
        assert found["passed"] is False
        assert why in found["detail"]
    md = report.markdown({**_result([2000.0], [2500.0], peers_runs=runs), "acceptance": checks})
    assert "error: " + INSTALL_ERROR in md
    assert "**NOT MEASURED** dispatch claims/s" in md
    text = report.summary(
        {**_result([2000.0], [2500.0], peers_runs=runs), "acceptance": checks}, []
    )
    assert "NOT MEASURED  single save >= LangGraph" in text
    assert "no network" in text


def test_peer_verdicts_compare_snapstore_medians_with_the_peer() -> None:
    runs = {"pgqueuer_backlog": PGQ_BACKLOG, "langgraph_put": LG_PUT}
    checks = acceptance.check(_result([2000.0, 2100.0], [2500.0, 2600.0], peers_runs=runs))
    pgq = _by_name(checks, "PgQueuer")
    assert pgq["verdict"] == "PASS"
    assert pgq["value"] == pytest.approx(1000.0 / 1800.0)
    assert "1,000,000 backlog" in pgq["name"]
    assert "median of 3 windows of 1.5 s, 1,700-1,900" in pgq["detail"]
    lg = _by_name(checks, "LangGraph")
    # snapstore's figure is its median on LangGraph's shape, not the saves workload's 2,050.
    assert SHAPE["saves_per_s"] == 1590.0
    assert lg["verdict"] == "PASS"
    assert lg["store"] == 1590.0
    assert lg["reference"] == 1500.0
    assert lg["value"] == pytest.approx(1590.0 / 1500.0)
    assert lg["name"].endswith("[json]")
    assert "10 outputs of 195 B" in lg["detail"]
    assert "10 outputs of 200 B" in lg["detail"]
    assert "before LangGraph 1,650, after LangGraph 1,550" in lg["detail"]
    assert "the saves workload (json" in lg["detail"]
    assert "2,050 saves/s" in lg["detail"]
    slow_shape = scale_shape.pooled({"before": {"windows": [1400.0]}, "after": {"windows": []}})
    lost = acceptance.check(_result([2000.0], [2500.0], peers_runs=runs, shape=slow_shape))
    assert _by_name(lost, "LangGraph")["verdict"] == "FAIL"  # 1,400 < 1,500, whatever saves did
    slow = acceptance.check(
        _result([2000.0], [2500.0], peers_runs=runs, claims=800.0)  # 800 < 1800 / 2
    )
    assert _by_name(slow, "PgQueuer")["verdict"] == "FAIL"


def test_peers_off_and_crashed_scale_workloads_are_not_measured() -> None:
    result = _result([2000.0], [2500.0])
    result["peers"] = {"enabled": False, "reason": "peers off (--no-peers)", "runs": {}}
    checks = acceptance.check(result)
    for fragment in ("PgQueuer", "LangGraph"):
        found = _by_name(checks, fragment)
        assert found["verdict"] == "not measured"
        assert "--no-peers" in found["detail"]
    crashed = _by_name(checks, "scale retention")
    assert crashed["verdict"] == "not measured"
    assert "boom" in crashed["detail"]
    scale = [c for c in checks if c["group"] == "scale" and c.get("workload") == "dispatch_backlog"]
    assert [c["verdict"] for c in scale] == ["PASS", "not measured"]


def test_report_lists_scale_and_peer_figures_next_to_target_and_reference(
    tmp_path: Path,
) -> None:
    runs = {
        "pgqueuer_small": {**PGQ_BACKLOG, "backlog": 1000, "jobs_per_s": 2000.0},
        "pgqueuer_backlog": PGQ_BACKLOG,
        "langgraph_put": LG_PUT,
        "langgraph_step": {"peer": "langgraph", "error": "exit 1, no JSON on stdout: boom"},
    }
    result = _result([2000.0, 2100.0], [2500.0, 2600.0], peers_runs=runs)
    result["acceptance"] = acceptance.check(result)
    md = report.markdown(result)
    assert (
        "| dispatch_backlog | claims_per_s_backlog | 1,000.0 | claims/s | >= 1/2 of small |" in md
    )
    assert "small 1,100.0" in md
    assert "| retention | FAILED |" in md
    assert "1,800 jobs/s" in md
    assert "1,500 puts/s" in md
    assert "error: exit 1" in md
    assert "| snapstore_shape | 1,590 saves/s |" in md
    assert "10 outputs x 195 B" in md
    assert md.index("| snapstore_shape |") < md.index("| langgraph_put |")
    assert "## Single save vs its statements replayed raw" in md
    paths = report.write(result, tmp_path, "run-test")
    assert all(p.stat().st_size > 0 for p in paths)
    assert json.loads(paths[0].read_text())["single_save"]["json"]["pairs"] == 2


def test_compare_covers_single_save_ratio_and_scale_figures() -> None:
    base = _result([2000.0], [2500.0])
    now = copy.deepcopy(base)
    now["scale"]["workloads"]["dispatch_backlog"]["figures"]["p99_ms_backlog"]["value"] = 8.0
    lines = compare.compare(now, base, 0.1)
    assert any(
        line.startswith("REGRESSION") and "scale/dispatch_backlog/p99_ms_backlog" in line
        for line in lines
    )
    assert any(
        line.startswith("ok") and "single_save/json/ratio_to_replay" in line for line in lines
    )


def test_quick_and_default_plans() -> None:
    default = cli.config_from(cli.run_parser().parse_args([]))
    assert default.peers
    assert default.scale_size == "default"
    assert default.repeats == 5
    assert set(default.scale) == {
        "dispatch_backlog",
        "task_growth",
        "retention",
        "load_big",
        "async_saves",
    }
    quick = cli.config_from(cli.run_parser().parse_args(["--quick"]))
    assert not quick.peers
    assert quick.scale_size == "small"
    assert quick.repeats >= 3
    assert quick.duration < default.duration
    forced = cli.config_from(cli.run_parser().parse_args(["--quick", "--peers", "--no-scale"]))
    assert forced.peers
    assert forced.scale == ()
    large = cli.config_from(cli.run_parser().parse_args(["--scale-size", "large"]))
    assert large.scale_size == "large"


def test_peer_schemas_are_accepted_by_the_peer_scripts() -> None:
    for prefix in ("bench_", "h3_", "bsmoke_0a1b2c3d_", "Odd-Prefix."):
        for short in ("pgq", "lg"):
            assert re.fullmatch(r"peer_[a-z0-9_]{1,40}", peer_plan.peer_schema(prefix, short))
    assert peer_plan.pgqueuer_backlogs("default") == {
        "pgqueuer_small": 1_000,
        "pgqueuer_backlog": 1_000_000,
    }


def test_run_peer_reports_instead_of_raising() -> None:
    found = peers.run_peer("nope", "postgresql://127.0.0.1/none")
    assert found["error"].startswith("unknown peer")


def test_langgraph_verdict_is_one_json_verdict_and_needs_the_shape_run() -> None:
    runs = {"langgraph_put": LG_PUT, "langgraph_step": LG_STEP}
    result = _result([2000.0], [2500.0], peers_runs=runs)
    result["config"]["codecs"] = ["json", "msgpack", "cbor"]
    lg = [c for c in acceptance.check(result) if "LangGraph" in c["name"]]
    assert len(lg) == 1
    assert lg[0]["codec"] == "json"
    assert "step mode (put_writes + put): 880 steps/s, 900 puts/s" in lg[0]["detail"]
    crashed = scale_shape.pooled(
        {"before": {"error": "RuntimeError('gone')"}, "after": {"error": "RuntimeError('x')"}}
    )
    for shape, why in (
        (crashed, "before: RuntimeError('gone'); after: RuntimeError('x')"),
        ({}, "snapstore on the LangGraph shape not run"),
    ):
        found = _by_name(
            acceptance.check(_result([2000.0], [2500.0], peers_runs=runs, shape=shape)), "LangGraph"
        )
        assert found["verdict"] == "not measured"
        assert found["passed"] is False
        assert why in found["detail"]


def test_langgraph_runs_on_the_shape_between_two_snapstore_halves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runner = peer_plan.PeerRunner("postgresql://127.0.0.1/none", "h4_", 1.5, 3)
    calls: list[str] = []
    options: dict[str, Any] = {}

    def fake_peer(name: str, dsn: str, **given: Any) -> dict[str, Any]:
        calls.append(f"{name} {given['mode']}")
        options.update(given)
        return {"peer": name, "mode": given["mode"], "puts_per_s": 1.0}

    def fake_shape(label: str, concurrency: int, warmup: float) -> dict[str, Any]:
        calls.append(f"snapstore {label}")
        return {"threads": concurrency, "window_s": 1.5, "windows": [10.0, 30.0]}

    monkeypatch.setattr(runner, "install", lambda name: {"venv": "/v", "install_s": 0.0})
    monkeypatch.setattr(peers, "run_peer", fake_peer)
    monkeypatch.setattr(runner, "snapstore_shape", fake_shape)
    found, shape = peer_plan.run_langgraph(runner, 8, 0.5, lambda label: contextlib.nullcontext())
    assert calls == ["snapstore before", "langgraph put", "langgraph step", "snapstore after"]
    assert set(found) == {"langgraph_put", "langgraph_step"}
    assert shape["saves_per_s"] == 20.0
    assert shape["windows"] == [10.0, 30.0, 10.0, 30.0]
    assert set(shape["halves"]) == {"before", "after"}
    assert shape["threads"] == 8
    command = peers.peer_command("langgraph", Path("/v"), "postgresql://x", **options)
    for flag, value in (("--channels", "10"), ("--value-bytes", "200"), ("--steps", "10")):
        assert command[command.index(flag) + 1] == value
    assert options["concurrency"] == 8


def test_the_shape_workflow_replaces_one_output_of_about_200_bytes_per_step() -> None:
    snap = scale_shape.create("i-1")
    assert len(snap.task_results) == scale_shape.CHANNELS == 10
    assert 180 <= scale_shape.output_bytes() <= 220
    for n in range(scale_shape.STEPS):
        nxt = scale_shape.step(snap, n)
        changed = [k for k in nxt.task_results if nxt.task_results[k] is not snap.task_results[k]]
        assert changed == [scale_shape.task_id(n % scale_shape.CHANNELS)]
        assert nxt.task_results[changed[0]].output != snap.task_results[changed[0]].output
        snap = nxt
    assert len(snap.task_results) == 10
