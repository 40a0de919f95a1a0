"""Every engine reads a lake of traces as it is (docs/engines.md, spec 'Lakes').

The recipes of docs/engines.md run on one lake of two runs x two ranks written by
TraceWriter; each engine's per-layer dead fraction and per-step mean/std must equal what
tracefmt reads, and the dead layer the engines find is the one tracefmt's dead analyzer
reports. A live writer's rows reach polars and DuckDB within the roll interval.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_NODES

import tracefmt
from tracefmt.stats import tensor_stats

DOC = Path(__file__).resolve().parent.parent / "docs" / "engines.md"
#: The index (live run, object storage) and one page of recipes per engine.
PAGES = [DOC, *sorted((DOC.parent / "engines").glob("*.md"))]
RUNS = ("healthy", "dead")
STEPS, RANKS = 12, 2


def _recipes() -> dict[str, str]:
    """Engine section title -> its Python code, from docs/engines.md and docs/engines/*.md."""
    out = {}
    for page in PAGES:
        for m in re.finditer(r"^## (.+?)\n(.*?)(?=^## |\Z)", page.read_text(), flags=re.S | re.M):
            code = re.findall(r"```python\n(.*?)```", m.group(2), flags=re.S)
            if code:
                out[m.group(1).strip()] = "\n".join(code)
    return out


def _recipe(title: str) -> dict:
    ns: dict = {}
    exec(compile(_recipes()[title], f"docs/engines#{title}", "exec"), ns)  # noqa: S102 - the documented recipe, run as written
    return ns


def _write_run(lake: Path, run: str) -> None:
    """Rank 0 and 1 of a tiny MLP; in run 'dead' the ReLU's input is negative from step 2 on."""
    for rank in range(RANKS):
        rng = np.random.default_rng(17 * rank + len(run))
        opts = tracefmt.WriterOptions(roll_steps=4, flush_interval=0)
        with tracefmt.TraceWriter(
            lake / f"{run}.trace", rank=rank, world_size=RANKS, run_id=run, mode="append" if rank else "create", options=opts
        ) as w:
            w.write_nodes(TINY_NODES)
            for step in range(STEPS):
                h = rng.standard_normal((8, 16)) * (1 + step / 10)
                if run == "dead" and step >= 2:
                    h = -np.abs(h) - 0.1
                a = np.maximum(h, 0)
                rows = [dict(step=step, phase="train", node_id=nid, kind="activation", slot="0", call=0, seq=i, **tensor_stats(t))
                        for i, (nid, t) in enumerate([(1, h), (2, a), (3, a[:, :4] @ np.ones((4, 3)))])]  # fmt: skip
                w.write_records(rows)
                w.log_scalar("loss", 1.0 / (step + 1), step=step)


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lake")
    for run in RUNS:
        _write_run(root, run)
    return root


def _reference(lake: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Dead fraction and pooled mean/std per step, from tracefmt's reader."""
    frames = []
    for run in RUNS:
        t = tracefmt.open(lake, run=run)
        frames.append(t.read(kinds="activation", columns=["run_id", "step", "node_id", "numel", "zero_count", "mean", "std"]).to_pandas())
    df = pd.concat(frames)
    dead = df.groupby(["run_id", "node_id"], as_index=False)[["zero_count", "numel"]].sum()
    dead["dead_fraction"] = dead["zero_count"] / dead["numel"]
    rows = []
    for (run, step, nid), g in df.groupby(["run_id", "step", "node_id"]):
        n = g["numel"].to_numpy(float)
        mean = float(np.sum(n * g["mean"]) / n.sum())
        var = float(np.sum(n * (g["std"] ** 2 + (g["mean"] - mean) ** 2)) / n.sum())
        rows.append((run, step, nid, mean, np.sqrt(var)))
    return dead[["run_id", "node_id", "dead_fraction"]], pd.DataFrame(rows, columns=["run_id", "step", "node_id", "mean", "std"])


def _same(got: pd.DataFrame, want: pd.DataFrame, keys: list[str]) -> None:
    got = got.astype({k: want[k].dtype for k in keys}).sort_values(keys).reset_index(drop=True)
    want = want.sort_values(keys).reset_index(drop=True)
    assert got[keys].values.tolist() == want[keys].values.tolist()
    for c in want.columns.difference(keys):
        np.testing.assert_allclose(got[c].to_numpy(float), want[c].to_numpy(float), rtol=1e-9, atol=1e-12, err_msg=c)


def _check(recipe: dict, lake: Path, *args) -> None:
    dead, stats = _reference(lake)
    _same(recipe["dead_fraction"](*args, str(lake)), dead, ["run_id", "node_id"])
    _same(recipe["step_stats"](*args, str(lake)), stats, ["run_id", "step", "node_id"])


def test_every_engine_section_is_tested():
    assert set(_recipes()) == {"pyarrow", "pandas", "polars", "DuckDB (SQL)", "Dask", "Ray Data", "Spark", "A live run"}


@pytest.mark.parametrize("engine", ["pyarrow", "pandas", "polars", "DuckDB (SQL)", "Dask"])
def test_engine_recipe_matches_tracefmt(lake, engine):
    _check(_recipe(engine), lake)


def test_reference_agrees_with_the_dead_analyzer(lake):
    """The layer whose dead fraction the engines compute as highest is the one the dead analyzer reports."""
    from tracefmt.analyzers import run as run_analyzers

    report = run_analyzers(str(lake / "dead.trace"), names=["dead"])
    dead_nodes = {f.node_id for f in report.findings_list if f.code == "dead-layer"}
    frac = _reference(lake)[0].set_index(["run_id", "node_id"])["dead_fraction"]
    assert dead_nodes and all(frac[("dead", n)] > 0.8 for n in dead_nodes)
    healthy = run_analyzers(str(lake / "healthy.trace"), names=["dead"])
    assert "dead-layer" not in {f.code for f in healthy.findings_list}


@pytest.mark.slow
def test_ray_data_recipe_matches_tracefmt(lake):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        _check(_recipe("Ray Data"), lake)
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def spark():
    pyspark = pytest.importorskip("pyspark.sql")
    if shutil.which("java") is None:
        pytest.fail("Spark needs a Java runtime: run 'make system-deps' (installs default-jre-headless)")
    session = (
        pyspark.SparkSession.builder.master("local[1]")
        .appName("tracefmt-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "512m")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.sql.ansi.enabled", "false")
        .getOrCreate()
    )
    yield session
    session.stop()


@pytest.mark.slow
def test_spark_recipe_matches_tracefmt(lake, spark):
    _check(_recipe("Spark"), lake, spark)


def test_one_query_sees_every_run_and_rank_with_one_rank_type(lake):
    import duckdb
    import polars as pl

    glob = f"{lake}/*/records/*/*.parquet"
    got = duckdb.sql(
        f"SELECT run_id, rank, typeof(rank) AS t, COUNT(*) AS n FROM read_parquet('{glob}') GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    assert got == [(run, r, "INTEGER", STEPS * 3) for run in sorted(RUNS) for r in range(RANKS)]
    assert pl.scan_parquet(glob).collect_schema()["rank"] == pl.Int32
    assert pd.read_parquet(str(lake / "dead.trace" / "records"))["rank"].dtype == np.int32
    for table in ("nodes.parquet", "scalars/*/*.parquet"):
        runs = duckdb.sql(f"SELECT DISTINCT run_id FROM read_parquet('{lake}/*/{table}') ORDER BY 1").fetchall()
        assert runs == [(r,) for r in sorted(RUNS)], table


def test_open_and_cli_select_a_run_of_the_lake(lake, capsys):
    from tracefmt.cli import main

    with pytest.raises(tracefmt.UsageError, match="available: dead, healthy"):
        tracefmt.open(lake)
    assert tracefmt.open(lake, run="dead").run_id == "dead"
    assert tracefmt.open(lake, run="healthy.trace").run_id == "healthy"
    with pytest.raises(tracefmt.UsageError, match="no run 'nope'"):
        tracefmt.open(lake, run="nope")
    assert main(["analyze", str(lake), "--run", "dead", "--only", "dead", "--format", "json"]) == 1  # the dead layer is an error finding
    out = capsys.readouterr().out
    assert "dead.trace" in out and "healthy.trace" not in out


def test_a_live_run_is_visible_to_polars_and_duckdb_within_the_roll_interval(tmp_path):
    import duckdb
    import polars as pl

    path = tmp_path / "live.trace"
    roll = 0.5
    w = tracefmt.TraceWriter(path, options=tracefmt.WriterOptions(roll_seconds=roll, flush_interval=0.1))
    try:
        w.write_nodes(TINY_NODES)
        glob = f"{path}/records/*/*.parquet"
        for step in range(3):
            t0 = time.monotonic()
            w.write_records([dict(step=step, phase="train", node_id=2, kind="activation", slot="0", call=0, **tensor_stats(np.ones(4)))])
            seen_pl = seen_db = None
            while time.monotonic() - t0 < 20 * roll and (seen_pl is None or seen_db is None):
                files = list(path.glob("records/*/*.parquet"))
                if files:
                    if seen_pl is None and pl.scan_parquet(glob).select(pl.col("step").max()).collect().item() == step:
                        seen_pl = time.monotonic() - t0
                    if seen_db is None and duckdb.sql(f"SELECT MAX(step) FROM read_parquet('{glob}')").fetchall()[0][0] == step:
                        seen_db = time.monotonic() - t0
                time.sleep(0.05)
            # Visible after about one roll interval (a loaded machine may add scheduling delay; no timing bound here).
            assert seen_pl is not None and seen_db is not None, f"step {step} not visible after {20 * roll} s"
            assert not tracefmt.open(path).complete
        ns = _recipe("A live run")
        assert ns["steps_so_far"](str(path)) == 2
    finally:
        w.close()
    assert duckdb.sql(f"SELECT COUNT(*) FROM read_parquet('{path}/records/*/*.parquet')").fetchall()[0][0] == 3
