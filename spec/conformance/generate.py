"""Generate the conformance traces of spec/conformance/ from the spec alone.

This script uses pyarrow and numpy only (no tracefmt code): it is also a worked example
of writing a conforming trace by following spec/TRACE_FORMAT.md. Every case is a
directory ``cases/<name>/`` holding ``trace/`` (the trace) and ``expected.json``::

    {"verdict": "valid" | "invalid" | "unreadable",
     "codes": [problem codes the validator must report],
     "mentions": [words the first message of each code must contain],
     "readable_rows": {table: rows a reader must return}, "description": "..."}

An invalid case has exactly one defect. Run ``python spec/conformance/generate.py`` to
regenerate every case (the output is deterministic).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
CASES = HERE / "cases"

# -- the tables of spec/TRACE_FORMAT.md section 'Tables', typed as the spec says --------
I32, I64, F32, F64, STR, BOOL = pa.int32(), pa.int64(), pa.float32(), pa.float64(), pa.string(), pa.bool_()
NODES = pa.schema([
    ("node_id", I32), ("name", STR), ("scope", STR), ("op_type", STR), ("parent", I32), ("container", BOOL),
    ("inputs", pa.list_(STR)), ("outputs", pa.list_(STR)), ("attributes", STR), ("param_count", I64),
    ("order", I32), ("note", STR),
])  # fmt: skip
RECORDS = pa.schema([
    ("step", I64), ("phase", STR), ("rank", I32), ("node_id", I32), ("kind", STR), ("slot", STR), ("call", I32),
    ("seq", I32), ("dtype", STR), ("shape", pa.list_(I64)), ("numel", I64), ("nan_count", I64), ("inf_count", I64),
    ("zero_count", I64), ("pos_count", I64), ("mean", F64), ("std", F64), ("min", F64), ("max", F64),
    ("abs_mean", F64), ("l2", F64), ("median", F64), ("hist_scheme", STR), ("hist_lo", F64), ("hist_hi", F64),
    ("hist_counts", pa.list_(I64)), ("channel_axis", I32), ("channel_pos_frac", pa.list_(F32)),
    ("channel_mean", pa.list_(F32)), ("mat_trace", F64), ("mat_spectral", F64), ("mat_sv_mean", F64), ("mat_sv_var", F64),
])  # fmt: skip
SCALARS = pa.schema([("step", I64), ("epoch", I32), ("phase", STR), ("rank", I32), ("name", STR), ("value", F64), ("wall_time", F64)])
PREDICTIONS = pa.schema([("step", I64), ("epoch", I32), ("phase", STR), ("rank", I32), ("y_true", I64), ("y_pred", I64)])

NODE_ROWS = [
    dict(node_id=0, name="", scope="", op_type="MLP", parent=None, container=True, inputs=[], outputs=[],
         attributes=None, param_count=0, order=0, note=None),
    dict(node_id=1, name="fc1", scope="fc1", op_type="Linear", parent=0, container=False, inputs=["x"], outputs=["fc1:0"],
         attributes='{"in_features": 6, "out_features": 8}', param_count=56, order=1, note=None),
    dict(node_id=2, name="act", scope="act", op_type="ReLU", parent=0, container=False, inputs=["fc1:0"], outputs=["act:0"],
         attributes="{}", param_count=0, order=2, note=None),
    dict(node_id=3, name="fc2", scope="fc2", op_type="Linear", parent=0, container=False, inputs=["act:0"], outputs=["y"],
         attributes='{"in_features": 8, "out_features": 3}', param_count=27, order=3, note=None),
]  # fmt: skip


# -- statistics, histograms and per-channel vectors as defined in 'Statistics' ----------
def symlog_counts(x: np.ndarray, lo: float = 1e-6, hi: float = 1e6, n: int = 99) -> list[int]:
    """Section 'Histograms', scheme symlog: M bins per sign between lo and hi, a zero bin, two overflow bins."""
    per_sign = (n - 3) // 2
    a, b = math.log10(lo), math.log10(hi)
    m = [10.0 ** (a + j * (b - a) / per_sign) for j in range(per_sign + 1)]
    m[0], m[-1] = lo, hi
    counts = [0] * n
    center = per_sign + 1
    for v in x.reshape(-1).astype(np.float64):
        if not math.isfinite(v):
            continue
        mag = abs(v)
        if mag < lo:
            counts[center] += 1
            continue
        j = per_sign if mag >= hi else max(k for k in range(per_sign) if m[k] <= mag)
        counts[center + 1 + j if v >= 0 else center - 1 - j] += 1
    return counts


def record(x: np.ndarray, *, step: int, node_id: int, kind: str, slot: str = "0", seq: int = 0, channel_axis: int | None = None) -> dict:
    """One records row for tensor ``x`` (section 'Statistics')."""
    flat = x.reshape(-1)
    fin = flat[np.isfinite(flat)].astype(np.float64)
    n = fin.size
    row = dict(step=step, phase="train", rank=0, node_id=node_id, kind=kind, slot=slot, call=0, seq=seq, dtype=str(x.dtype),
               shape=list(x.shape), numel=int(flat.size), nan_count=int(np.isnan(flat).sum()), inf_count=int(np.isinf(flat).sum()),
               zero_count=int((flat == 0).sum()), pos_count=int((flat > 0).sum()),
               mean=float(fin.mean()) if n else None, std=float(fin.std()) if n else None,
               min=float(fin.min()) if n else None, max=float(fin.max()) if n else None,
               abs_mean=float(np.abs(fin).mean()) if n else None, l2=float(np.sqrt((fin * fin).sum())),
               median=float(np.sort(fin)[(n - 1) // 2]) if n else None,
               hist_scheme="symlog", hist_lo=1e-6, hist_hi=1e6, hist_counts=symlog_counts(x))  # fmt: skip
    if channel_axis is not None:
        moved = np.moveaxis(x, channel_axis, 0).reshape(x.shape[channel_axis], -1)
        row.update(channel_axis=channel_axis, channel_pos_frac=((moved > 0).mean(axis=1)).tolist(), channel_mean=moved.mean(axis=1).tolist())
    if x.ndim == 2 and kind == "weight":
        sv = np.linalg.svd(x.astype(np.float64), compute_uv=False)
        row.update(mat_trace=float(np.trace(x.astype(np.float64))), mat_spectral=float(sv[0]), mat_sv_mean=float(sv.mean()), mat_sv_var=float(sv.var()))
    return row


def record_rows(steps: int = 3, rank: int = 0) -> list[dict]:
    rng = np.random.default_rng(1234 + rank)
    w1 = rng.standard_normal((8, 6)).astype(np.float32)
    rows = []
    for step in range(steps):
        x = rng.standard_normal((4, 6)).astype(np.float32)
        h = x @ w1.T
        a = np.maximum(h, 0)
        if step == 2:
            a[0, 0] = np.nan  # a NaN is data: counted, excluded from the statistics
            a[1, 1] = np.inf
        y = a[:, :3] * 0.5
        rows += [
            record(h, step=step, node_id=1, kind="activation", seq=0, channel_axis=1),
            record(a, step=step, node_id=2, kind="activation", seq=1, channel_axis=1),
            record(y, step=step, node_id=3, kind="activation", seq=2),
            record(w1, step=step, node_id=1, kind="weight", slot="weight", seq=3),
            record(np.zeros((0, 3), np.float32), step=step, node_id=3, kind="gradient", seq=4),
        ]
    for r in rows:
        r["rank"] = rank
    return rows


# Format 1.1 added nodes.op_class (section 'Enumerations', OpClass).
NODES_1_1 = NODES.insert(4, pa.field("op_class", STR))
OP_CLASSES = ["container", "linear", "rectifier", "linear"]


def nodes_with_op_class(classes: list[str | None]) -> pa.Table:
    return table(NODES_1_1, [dict(r, op_class=c) for r, c in zip(NODE_ROWS, classes)])


def table(schema: pa.Schema, rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


def manifest(**over) -> dict:
    m = {"format": "tracefmt", "format_version": "1.0", "run_id": "conformance-0001", "created": "2026-11-23T00:00:00+00:00",
         "complete": True, "producer": {"adapter": "spec/conformance/generate.py", "framework": "numpy", "framework_version": np.__version__},
         "model": "mlp", "world_size": 1, "metadata": {}}  # fmt: skip
    m.update(over)
    return {k: v for k, v in m.items() if v is not None}


def write_ipc_file(path: Path, data: pa.Table, *, batch_rows: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with ipc.new_file(str(path), data.schema) as w:
        for b in data.to_batches(max_chunksize=batch_rows):
            w.write_batch(b)


def write_trace(root: Path, *, man: dict | None = None, nodes: pa.Table | None = None, records: pa.Table | None = None,
                scalars: pa.Table | None = None) -> None:  # fmt: skip
    root.mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps(man if man is not None else manifest(), indent=2) + "\n")
    if nodes is not None:
        write_ipc_file(root / "nodes.arrow", nodes)
    if records is not None:
        write_ipc_file(root / "records" / "rank=0" / "part-00000.arrow", records, batch_rows=5)
    if scalars is not None:
        write_ipc_file(root / "scalars" / "rank=0" / "part-00000.arrow", scalars)


def scalar_rows(steps: int = 3, rank: int = 0) -> list[dict]:
    return [dict(step=s, epoch=0, phase="train", rank=rank, name="loss", value=1.0 / (s + 1), wall_time=1.8e9 + s) for s in range(steps)]


def base(**over) -> dict:
    """The parts of the minimal valid trace; ``over`` replaces some of them."""
    parts = dict(man=manifest(), nodes=table(NODES, NODE_ROWS), records=table(RECORDS, record_rows()), scalars=table(SCALARS, scalar_rows()))
    parts.update(over)
    return parts


def mutate_records(fn) -> pa.Table:
    rows = record_rows()
    fn(rows)
    return table(RECORDS, rows)


def case(name: str, verdict: str, description: str, *, codes=(), mentions=(), readable_rows=None, build) -> None:
    d = CASES / name
    build(d / "trace")
    expected = {"verdict": verdict, "description": description, "codes": list(codes), "mentions": list(mentions)}
    if readable_rows:
        expected["readable_rows"] = readable_rows
    (d / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")


# -- the cases -------------------------------------------------------------------------
def build_multirank(root: Path) -> None:
    """Two ranks, every optional table, a compacted (Parquet) segment and a stream segment."""
    write_trace(root, man=manifest(world_size=2), nodes=table(NODES, NODE_ROWS))
    r0 = table(RECORDS, record_rows(rank=0))
    write_ipc_file(root / "records" / "rank=0" / "part-00000.arrow", r0.slice(0, 10))
    pq.write_table(r0.slice(10), root / "records" / "rank=0" / "part-00001.parquet")
    r1 = table(RECORDS, record_rows(rank=1))
    (root / "records" / "rank=1").mkdir(parents=True)
    with ipc.new_stream(str(root / "records" / "rank=1" / "part-00000.arrows"), r1.schema) as w:
        w.write_table(r1)
    for rank in (0, 1):
        write_ipc_file(root / "scalars" / f"rank={rank}" / "part-00000.arrow", table(SCALARS, scalar_rows(rank=rank)))
    preds = [dict(step=2, epoch=0, phase="eval", rank=0, y_true=i % 3, y_pred=(i * 2) % 3) for i in range(9)]
    write_ipc_file(root / "predictions" / "rank=0" / "part-00000.arrow", table(PREDICTIONS, preds))
    values = np.arange(24, dtype=np.float32).reshape(4, 6)
    ttype = pa.fixed_shape_tensor(pa.float32(), [4, 6])
    storage = pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate([values.ravel(), values.ravel() + 1])), 24)
    tensors = pa.table({
        "step": pa.array([0, 1], I64), "phase": ["train", "train"], "rank": pa.array([0, 0], I32),
        "node_id": pa.array([1, 1], I32), "kind": ["input", "input"], "slot": ["0", "0"], "call": pa.array([0, 0], I32),
        "dtype": ["float32", "float32"], "values": pa.ExtensionArray.from_storage(ttype, storage),
    })  # fmt: skip
    write_ipc_file(root / "tensors" / "rank=0" / "1-input-0-0-00000.arrow", tensors)


def build_forward_compatible(root: Path) -> None:
    """A newer minor version: an extra column, an extra table and an extra manifest field."""
    recs = table(RECORDS, record_rows())
    recs = recs.append_column("future_stat", pa.array([0.5] * recs.num_rows))
    write_trace(root, man=manifest(format_version="1.9", future_field={"x": 1}), nodes=table(NODES, NODE_ROWS), records=recs)
    write_ipc_file(root / "future_table" / "rank=0" / "part-00000.arrow", pa.table({"a": [1, 2]}))


def build_truncated(root: Path) -> None:
    """A writer killed mid-segment: no footer, the last batch cut in half, complete=false."""
    write_trace(root, **base(man=manifest(complete=False), records=None))
    seg = root / "records" / "rank=0" / "part-00000.arrow"
    write_ipc_file(seg, table(RECORDS, record_rows()), batch_rows=5)  # 3 batches of 5 rows
    data = seg.read_bytes()
    footer_len = int.from_bytes(data[-10:-6], "little")
    body_end = len(data) - 10 - footer_len - 8  # drop magic+length, footer and the end-of-stream marker
    seg.write_bytes(data[: body_end - 40])  # ... and the tail of the last batch


def build_rolled_live(root: Path) -> None:
    """Format 1.2: rank-<R> partitions, closed Parquet segments with run_id, and a live writer's open segment.

    The open segment's rows (hidden name, no footer yet) are read by tracefmt; a stale open
    segment whose closed segment exists (published, not yet removed) is ignored.
    """
    man = manifest(format_version="1.2", complete=False)
    write_trace(root, man=man)
    nodes = table(NODES, NODE_ROWS)
    pq.write_table(nodes.append_column("run_id", pa.array([man["run_id"]] * nodes.num_rows)), root / "nodes.parquet")
    recs = table(RECORDS, record_rows())
    recs = recs.append_column("run_id", pa.array([man["run_id"]] * recs.num_rows))
    part = root / "records" / "rank-0"
    part.mkdir(parents=True)
    pq.write_table(recs.slice(0, 5), part / "part-00000.parquet")
    write_ipc_file(part / ".part-00000.open.arrow", recs.slice(0, 5))  # published already: ignored
    pq.write_table(recs.slice(5, 5), part / "part-00001.parquet")
    seg = part / ".part-00002.open.arrow"
    write_ipc_file(seg, recs.slice(10), batch_rows=5)
    data = seg.read_bytes()
    footer_len = int.from_bytes(data[-10:-6], "little")
    seg.write_bytes(data[: len(data) - 10 - footer_len - 8])  # still open: no footer yet
    sc = table(SCALARS, scalar_rows())
    (root / "scalars" / "rank-0").mkdir(parents=True)
    pq.write_table(sc.append_column("run_id", pa.array([man["run_id"]] * sc.num_rows)), root / "scalars" / "rank-0" / "part-00000.parquet")


def build_unreadable_segment(root: Path) -> None:
    write_trace(root, **base())
    (root / "records" / "rank=0" / "part-00001.arrow").write_bytes(b"this is not an arrow file")


def generate() -> None:
    if CASES.exists():
        shutil.rmtree(CASES)
    recs = table(RECORDS, record_rows())
    case("valid_minimal", "valid", "nodes, records and scalars of a 3-layer MLP; NaN/Inf inside a tensor; an empty tensor",
         readable_rows={"records": 15, "scalars": 3}, build=lambda p: write_trace(p, **base()))  # fmt: skip
    case("valid_multirank", "valid", "two ranks; IPC file, IPC stream and Parquet segments; predictions and raw tensors",
         readable_rows={"records": 30, "scalars": 6, "predictions": 9}, build=build_multirank)  # fmt: skip
    case("valid_scalars_only", "valid", "no nodes and no records: only a scalar series (nodes.arrow is then optional)",
         readable_rows={"scalars": 3}, build=lambda p: write_trace(p, man=manifest(), scalars=table(SCALARS, scalar_rows())))  # fmt: skip
    case("valid_forward_compatible", "valid", "format_version 1.9 with an unknown column, table and manifest field (accepted)",
         codes=["newer-minor", "unknown-column", "unknown-entry"], mentions=["1.9", "future_stat", "future_table"],
         readable_rows={"records": 15}, build=build_forward_compatible)  # fmt: skip
    case("valid_truncated_segment", "valid", "writer killed: footer-less segment with a cut last batch; warnings only",
         codes=["truncated-segment", "incomplete"], mentions=["truncated", "complete"], readable_rows={"records": 10},
         build=build_truncated)  # fmt: skip
    case("valid_op_class", "valid", "format 1.1: every node states its op_class (the op vocabulary); one is null (producer cannot tell)",
         readable_rows={"records": 15}, build=lambda p: write_trace(p, **base(man=manifest(format_version="1.1"),
                                                                            nodes=nodes_with_op_class(OP_CLASSES[:3] + [None]))))  # fmt: skip
    case("invalid_bad_op_class", "invalid", "a node has op_class 'relu' (an op_type, not a value of the OpClass enumeration)",
         codes=["bad-enum"], mentions=["relu"], build=lambda p: write_trace(p, **base(man=manifest(format_version="1.1"),
                                                                                      nodes=nodes_with_op_class(["container", "linear", "relu", "linear"]))))  # fmt: skip
    case("valid_rolled_live", "valid", "format 1.2: rank-<R> partitions, rolled Parquet segments with run_id, a live writer's open segment",
         codes=["truncated-segment", "incomplete"], mentions=["footer", "complete"], readable_rows={"records": 15, "scalars": 3},
         build=build_rolled_live)  # fmt: skip
    case("invalid_missing_column", "invalid", "records lack the required column 'kind'",
         codes=["missing-column"], mentions=["kind"], build=lambda p: write_trace(p, **base(records=recs.drop_columns(["kind"]))))  # fmt: skip
    case("invalid_wrong_type", "invalid", "records.step is int32 instead of int64",
         codes=["wrong-type"], mentions=["step"],
         build=lambda p: write_trace(p, **base(records=recs.set_column(0, pa.field("step", I32), recs.column("step").cast(I32)))))  # fmt: skip
    case("invalid_bad_enum", "invalid", "a record has kind 'activations' (not in the Kind enumeration)",
         codes=["bad-enum"], mentions=["activations"],
         build=lambda p: write_trace(p, **base(records=mutate_records(lambda r: r[4].update(kind="activations")))))  # fmt: skip
    case("invalid_unknown_major_version", "invalid", "format_version 2.0: readers must refuse an unknown major version",
         codes=["unsupported-version"], mentions=["2.0"], build=lambda p: write_trace(p, **base(man=manifest(format_version="2.0"))))  # fmt: skip
    case("invalid_duplicate_node_id", "invalid", "two nodes share node_id 2",
         codes=["duplicate-node-id"], mentions=["node_id 2"],
         build=lambda p: write_trace(p, **base(nodes=table(NODES, NODE_ROWS + [dict(NODE_ROWS[2], name="act_copy")]))))  # fmt: skip
    case("invalid_dangling_record_node", "invalid", "a record refers to node_id 99, which is not in nodes",
         codes=["dangling-reference"], mentions=["99"],
         build=lambda p: write_trace(p, **base(records=mutate_records(lambda r: r[3].update(node_id=99)))))  # fmt: skip
    case("invalid_dangling_parent", "invalid", "a node's parent 42 does not exist (a dangling edge of the hierarchy)",
         codes=["dangling-reference"], mentions=["parent 42"],
         build=lambda p: write_trace(p, **base(nodes=table(NODES, [dict(n, parent=42) if n["node_id"] == 3 else n for n in NODE_ROWS]))))  # fmt: skip
    case("invalid_parent_cycle", "invalid", "nodes 1 and 2 are each other's parent",
         codes=["parent-cycle"], mentions=["cycle"],
         build=lambda p: write_trace(p, **base(nodes=table(NODES, [dict(n, parent={1: 2, 2: 1}.get(n["node_id"], n["parent"])) for n in NODE_ROWS]))))  # fmt: skip
    case("invalid_bad_histogram", "invalid", "symlog histogram counts do not add up to the finite elements",
         codes=["bad-histogram"], mentions=["sum"],
         build=lambda p: write_trace(p, **base(records=mutate_records(lambda r: r[0]["hist_counts"].__setitem__(49, r[0]["hist_counts"][49] + 3)))))  # fmt: skip
    case("invalid_histogram_bins", "invalid", "a symlog histogram with an even number of bins",
         codes=["bad-histogram"], mentions=["odd"],
         build=lambda p: write_trace(p, **base(records=mutate_records(lambda r: r[1].update(hist_counts=r[1]["hist_counts"][:-1])))))  # fmt: skip
    case("invalid_unknown_hist_scheme", "invalid", "hist_scheme 'log' is not a known scheme",
         codes=["bad-enum"], mentions=["log"],
         build=lambda p: write_trace(p, **base(records=mutate_records(lambda r: r[1].update(hist_scheme="log")))))  # fmt: skip
    case("invalid_null_in_required", "invalid", "a record's phase is null",
         codes=["null-value"], mentions=["phase"],
         build=lambda p: write_trace(p, **base(records=mutate_records(lambda r: r[2].update(phase=None)))))  # fmt: skip
    case("invalid_numel_mismatch", "invalid", "numel is not the product of shape",
         codes=["numel-mismatch"], mentions=["numel"],
         build=lambda p: write_trace(p, **base(records=mutate_records(lambda r: r[0].update(numel=31)))))  # fmt: skip
    case("invalid_bad_counts", "invalid", "nan_count + inf_count exceeds numel",
         codes=["bad-counts"], mentions=["nan_count"],
         build=lambda p: write_trace(p, **base(records=mutate_records(lambda r: r[2].update(nan_count=40)))))  # fmt: skip
    case("invalid_channel_length", "invalid", "channel_pos_frac has 7 entries but shape[channel_axis] is 8",
         codes=["bad-channel"], mentions=["channel_pos_frac"],
         build=lambda p: write_trace(p, **base(records=mutate_records(lambda r: r[0].update(channel_pos_frac=r[0]["channel_pos_frac"][:7])))))  # fmt: skip
    case("invalid_stat_without_elements", "invalid", "an empty tensor has a mean (must be null)",
         codes=["stat-without-elements"], mentions=["mean"],
         build=lambda p: write_trace(p, **base(records=mutate_records(lambda r: r[4].update(mean=0.0)))))  # fmt: skip
    case("invalid_duplicate_record_key", "invalid", "two records share (step, phase, rank, node_id, kind, slot, call)",
         codes=["duplicate-key"], mentions=["repeat the key"],
         build=lambda p: write_trace(p, **base(records=mutate_records(lambda r: r[5].update(step=0)))))  # fmt: skip
    case("invalid_rank_mismatch", "invalid", "a row in partition rank=0 says rank 1",
         codes=["bad-rank"], mentions=["rank"],
         build=lambda p: write_trace(p, **base(records=mutate_records(lambda r: r[0].update(rank=1)))))  # fmt: skip
    case("invalid_missing_manifest_field", "invalid", "manifest.json lacks run_id",
         codes=["missing-field"], mentions=["run_id"], build=lambda p: write_trace(p, **base(man=manifest(run_id=None))))  # fmt: skip
    case("invalid_missing_nodes", "invalid", "records exist but nodes.arrow does not",
         codes=["missing-table"], mentions=["nodes.arrow"], build=lambda p: write_trace(p, **base(nodes=None)))  # fmt: skip
    case("invalid_unreadable_segment", "invalid", "a segment file that is not Arrow at all",
         codes=["unreadable"], mentions=["part-00001"], build=build_unreadable_segment)  # fmt: skip
    case("unreadable_manifest", "unreadable", "manifest.json is not JSON: nothing can be checked (CLI exit 2)",
         mentions=["manifest.json"], build=lambda p: (write_trace(p, **base()), (p / "manifest.json").write_text("{not json")))  # fmt: skip


if __name__ == "__main__":
    generate()
    for d in sorted(CASES.iterdir()):
        print(d.relative_to(HERE))
