"""The benchmark harness runs end to end (tiny mode) and its outputs are well formed.

Only structure and sanity are asserted, never speed: timings on a shared CI box
are noise, and the acceptance targets are the benchmark's job to report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from bench import ceiling, compare, engine
from bench.workflows import Shape
from snapstore.testing import DSN_ENV

ROOT = Path(__file__).resolve().parent.parent
LATENCY_KEYS = {"count", "p50", "p95", "p99", "max"}


def _run_bench(dsn: str, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    prefix = f"bs{uuid.uuid4().hex[:5]}_"  # scale schema names must stay under 20 chars
    tiny = ["--duration", "1", "--codecs", "json", "--concurrency", "2", "--group-threads", "4"]
    # Two single-save window pairs, every scale workload at its tiny size, no peers (their
    # venvs need the network; their wiring is covered on synthetic results elsewhere).
    tiny += ["--repeats", "2", "--repeat-duration", "1", "--scale-size", "tiny"]
    tiny += ["--scale-repeats", "1", "--no-peers"]
    return subprocess.run(
        [sys.executable, "-m", "bench", *tiny, "--schema-prefix", prefix, "--out", str(out), *args],
        cwd=ROOT,
        env={**os.environ, DSN_ENV: dsn},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def bench_run(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench")
    proc = _run_bench(dsn, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads((out / "latest.json").read_text())
    result["_stdout"], result["_stderr"], result["_out"] = proc.stdout, proc.stderr, out
    return result


@pytest.mark.slow
def test_every_workload_ran_and_saved(bench_run: dict[str, Any]) -> None:
    runs = bench_run["runs"]
    assert [r["workload"] for r in runs] == list(engine.ALL_WORKLOADS)
    for run in runs:
        assert not run.get("failed"), run
        if run.get("skipped"):  # an optional API missing: said so, not hidden
            assert run["skipped"]
            continue
        assert run["errors"] == {}, (run["workload"], run["first_errors"])
        assert run["saves"] > 0, run["workload"]
        assert run["saves_per_s"] > 0, run["workload"]
        assert run["window_s"] >= 1.0
        assert run["blob_bytes_mean"] > 0
        assert run["wal_bytes_per_save"] > 0
        assert run["mode"]
        if run["workflows"]:
            assert set(run["workflow_latency_ms"]) == LATENCY_KEYS
            lat = run["workflow_latency_ms"]
            assert 0 <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]


@pytest.mark.slow
def test_flow_workloads_report_dispatch(bench_run: dict[str, Any]) -> None:
    caps = bench_run["capabilities"]
    flows = {r["workload"]: r for r in bench_run["runs"] if r["workload"] in engine.FLOW_WORKLOADS}
    for run in flows.values():
        assert run["workflows"] > 0, run["workload"]
        assert set(run["pickup_latency_ms"]) == LATENCY_KEYS
        assert run["mode"].startswith("claims" if caps["claims"] else "in-process")
        if caps["claims"] and caps["wakeups"]:
            assert 0.0 <= run["wakeups"]["drop_rate"] <= 1.0
            assert run["wakeups"]["counters"]["received"] > 0


@pytest.mark.slow
def test_fanout_reports_branch_concurrency_in_both_modes(bench_run: dict[str, Any]) -> None:
    """Sequentially a fork's branches never overlap (at most 1.0 at once); run by
    different workers they do."""
    runs = {r["workload"]: r for r in bench_run["runs"]}
    sequential, parallel = runs["fanout"], runs["fanout_parallel"]
    assert 0 < sequential["branch_concurrency"] <= 1.0
    assert parallel["mode"].endswith("+branches")
    assert parallel["branch_concurrency"] > 1.0
    assert parallel["workflows_per_s"] > 0


@pytest.mark.slow
def test_environment_ceilings_and_verdicts(bench_run: dict[str, Any]) -> None:
    settings = bench_run["environment"]["server"]["settings"]
    for key in ("fsync", "synchronous_commit", "wal_sync_method", "full_page_writes"):
        assert settings[key]
    assert bench_run["environment"]["machine"]["cpu_count"] >= 1
    ceilings = bench_run["ceilings"]
    for name in ("raw_single", "raw_grouped_tx", "raw_batch", "raw_workflow_json"):
        assert ceilings[name]["saves_per_s"] > 0
        assert ceilings[name]["failed"] == 0
    assert ceilings["raw_workflow_json"]["shape"] == "workflow"
    for name in ("pgbench_single", "pgbench_grouped_tx"):  # present, or the reason it is not
        assert "saves_per_s" in ceilings[name] or ceilings[name]["error"]
    assert bench_run["warnings"] == []  # every schema of the run: statement parse-cached
    verdicts = bench_run["acceptance"]
    main = [v for v in verdicts if v["group"] in ("single-save", "grouped")]
    assert len(main) == 2
    assert all(isinstance(v["passed"], bool) for v in verdicts)
    assert all(v["verdict"] in ("PASS", "FAIL", "not measured") for v in verdicts)
    assert all(not v["passed"] for v in verdicts if v["verdict"] == "not measured")
    stdout = bench_run["_stdout"]
    assert "single-save path" in stdout
    assert "PASS" in stdout or "FAIL" in stdout
    out: Path = bench_run["_out"]
    for suffix in (".json", ".md", ".png"):
        assert (out / f"latest{suffix}").stat().st_size > 0


@pytest.mark.slow
def test_single_save_runs_as_alternating_window_pairs(bench_run: dict[str, Any]) -> None:
    pairs = bench_run["single_save"]["json"]
    assert pairs["pairs"] == 2
    assert len(pairs["store_windows"]) == 2
    assert len(pairs["reference_windows"]) == 2
    assert pairs["errors"] == []
    assert pairs["order"] == ["store", "reference", "reference", "store"]
    assert pairs["ratio"] > 0
    assert pairs["ratio_min"] <= pairs["ratio"] * 1.0001
    assert pairs["ratio"] <= pairs["ratio_max"] * 1.0001
    saves = next(r for r in bench_run["runs"] if r["workload"] == "saves")
    assert saves["saves_per_s"] == pairs["store_median"]
    assert saves["windows"]["saves_per_s"] == pairs["store_windows"]
    replay = bench_run["ceilings"]["raw_workflow_json"]
    assert replay["saves_per_s"] == pairs["reference_median"]
    single = next(v for v in bench_run["acceptance"] if v["group"] == "single-save")
    assert single["value"] == pairs["ratio"]
    assert single["spread"] == [
        pairs["ratio_min"],
        pairs["ratio_max"],
    ]
    assert "single save [json]: median" in bench_run["_stdout"]


@pytest.mark.slow
def test_scale_workloads_ran_at_tiny_size(bench_run: dict[str, Any]) -> None:
    from bench import suite

    scale = bench_run["scale"]
    assert scale["size"] == "tiny"
    assert scale["repeats"] == 1
    assert list(scale["workloads"]) == list(suite.SCALE_WORKLOADS)
    for name, found in scale["workloads"].items():
        assert not found.get("failed"), (name, found.get("failed"))
        assert found["figures"], name
        assert found["checks"], name
        for fig in found["figures"].values():
            assert "value" in fig
            assert fig["unit"]
    scale_verdicts = [v for v in bench_run["acceptance"] if v["group"] == "scale"]
    assert len(scale_verdicts) == len(scale["checks"]) > 0
    md = (bench_run["_out"] / "latest.md").read_text()
    assert "## Scale workloads" in md
    assert "## Peers" in md
    for found in scale["workloads"].values():
        for key in found["figures"]:
            assert f"| {key} |" in md
    assert "scale (size tiny" in bench_run["_stdout"]


@pytest.mark.slow
def test_peers_off_are_not_measured_never_passed(bench_run: dict[str, Any]) -> None:
    assert bench_run["peers"]["enabled"] is False
    assert bench_run["peers"]["reason"]
    peer_verdicts = [v for v in bench_run["acceptance"] if v["group"] == "peer"]
    assert len(peer_verdicts) == 2  # PgQueuer, and LangGraph for the one codec
    for v in peer_verdicts:
        assert v["verdict"] == "not measured"
        assert v["passed"] is False
        assert "peers off" in v["detail"]
    assert "NOT MEASURED" in bench_run["_stdout"]


def _result(saves: float) -> dict[str, Any]:
    run = {"codec": "json", "workload": "saves", "saves_per_s": saves, "workflows_per_s": 1.0}
    return {"runs": [run]}


def test_compare_flags_a_drop_beyond_the_threshold(tmp_path: Path) -> None:
    base, now = tmp_path / "base.json", tmp_path / "now.json"
    base.write_text(json.dumps(_result(1000.0)))
    now.write_text(json.dumps(_result(850.0)))
    assert compare.main(now, base, 0.1) == 1
    assert compare.main(now, base, 0.2) == 0
    assert compare.main(base, base, 0.1) == 0


def test_pgbench_script_uses_only_its_own_variables(dsn: str) -> None:
    """pgbench reads ":name" anywhere, even in string literals: only ours may appear."""
    import re

    import psycopg

    from bench import ceiling

    with psycopg.connect(dsn, autocommit=True) as conn:
        script = ceiling.pgbench_script(conn, "bench_script_probe", 2)
    names = set(re.findall(r"(?<![:\w]):([A-Za-z_]\w*)", script))
    assert names == {"client_id", "iid0", "iid1", "v0", "v1"}
    assert script.count("save_checkpoint(") == 2
    assert "BEGIN;" in script
    assert "COMMIT;" in script


def test_percentile_is_nearest_rank() -> None:
    from bench.stats import percentile, summarize_ms

    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, q) for q in (50, 95, 99, 100)] == [50.0, 95.0, 99.0, 100.0]
    assert summarize_ms([]) is None
    assert summarize_ms([0.002]) == {"count": 1, "p50": 2.0, "p95": 2.0, "p99": 2.0, "max": 2.0}


def test_the_workflow_replay_sends_what_the_store_sends() -> None:
    """One linear workflow: a create, then a CAS update per step with only the task row
    that is new (the last one finishing the instance), one call each, the
    instance's created_at required once rows are skipped or the checkpoint is a delta (as
    the task cache does), deltas where the chain has room."""
    saves = ceiling.workflow_saves("json")
    shape = Shape()
    assert len(saves) == shape.steps + 1
    assert [s.plan.statements for s in saves] == [["save_checkpoint"]] * (shape.steps + 1)
    params = [s.plan.params[0] for s in saves]
    assert [len(p["task_ids"]) for p in params] == [0] + [1] * shape.steps
    assert [s.checks_created_at for s in saves] == [False, False] + [True] * (shape.steps - 1)
    deltas = [p["base_version"] is not None for p in params[1:]]
    assert any(deltas)
    assert not all(deltas)
    assert params[0]["status"] == "InProgress"
    assert params[-1]["status"] == "Completed"


def test_snapstore_on_the_langgraph_shape_saves_and_drops_its_schema(dsn: str) -> None:
    import psycopg

    from bench import scale_shape

    prefix = f"bs{uuid.uuid4().hex[:5]}_"
    found = scale_shape.measure(dsn, prefix, "t", threads=2, windows=2, seconds=0.2, warmup=0.1)
    assert "error" not in found, found
    assert found["errors"] == {}, found
    assert len(found["windows"]) == 2
    assert found["saves_per_s"] > 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (f"{prefix}shape",)
        ).fetchone()
    assert left == (0,)


@pytest.mark.slow
def test_dispatch_completes_leased_batches_without_errors(bench_run: dict[str, Any]) -> None:
    dispatch = bench_run["scale"]["workloads"]["dispatch_backlog"]
    assert "save_many" in dispatch["params"]["completion"]
    for name, state in dispatch["states"].items():
        assert state["errors"] == {}, (name, state["first_errors"])
        assert state["claims_per_s"] > 0, name
