"""The trace format's tables, defined once (spec/TRACE_FORMAT.md, section 'Tables').

Every column of every table is declared here with its Arrow type, nullability, unit and
meaning. The spec's column tables and the machine-readable files in ``spec/schema/`` are
generated from these declarations (``python -m tracefmt.schema``), and a test keeps them
equal, so code, spec and schema files cannot drift apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pyarrow as pa

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "Column",
    "TableDef",
    "TABLES",
    "NODES",
    "RECORDS",
    "SCALARS",
    "PREDICTIONS",
    "TENSORS",
    "FINDINGS",
    "MANIFEST_FIELDS",
    "type_name",
]

FORMAT_NAME = "tracefmt"
#: The version this library writes; readers accept any 1.x (spec section 'Versioning').
FORMAT_VERSION = "1.2"


@dataclass(frozen=True)
class Column:
    """One column of a table: name, Arrow type, nullability, unit and meaning."""

    name: str
    type: pa.DataType
    nullable: bool
    doc: str
    unit: str = ""

    @cached_property
    def field(self) -> pa.Field:
        """The column as a :class:`pyarrow.Field`."""
        # The tensors table's 'values' is declared with a null placeholder type (its real
        # type varies per file); Arrow requires null-typed fields to be nullable.
        return pa.field(self.name, self.type, nullable=self.nullable or self.type == pa.null())


@dataclass(frozen=True)
class TableDef:
    """A table of the trace: where it lives and its columns."""

    name: str
    location: str
    doc: str
    columns: tuple[Column, ...]
    #: Columns that together identify a row (documented, checked by the validator).
    key: tuple[str, ...] = ()

    @cached_property
    def schema(self) -> pa.Schema:
        """The table's Arrow schema, with the format version in its metadata."""
        return pa.schema(
            [c.field for c in self.columns],
            metadata={"tracefmt.table": self.name, "tracefmt.format_version": FORMAT_VERSION},
        )

    def column(self, name: str) -> Column:
        """Return the column called ``name``."""
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @cached_property
    def names(self) -> list[str]:
        """Column names in declaration order."""
        return [c.name for c in self.columns]

    @cached_property
    def types(self) -> tuple[pa.DataType, ...]:
        """Column types in declaration order."""
        return tuple(c.type for c in self.columns)


def type_name(t: pa.DataType) -> str:
    """Arrow type as written in the spec (pyarrow's own spelling, e.g. ``list<item: int64>``)."""
    return str(t)


_I32, _I64, _F32, _F64, _STR, _BOOL = pa.int32(), pa.int64(), pa.float32(), pa.float64(), pa.string(), pa.bool_()

# Columns shared by every observation-like table: one definition, reused.
_STEP = Column("step", _I64, False, "Global step counter of the producer (optimizer steps for training).", "step")
_PHASE = Column("phase", _STR, False, "One of the Phase enumeration: train, eval, infer.")
_RANK = Column("rank", _I32, False, "Process rank that produced the row (0 for single-process runs).")
_EPOCH = Column("epoch", _I32, True, "Epoch number if the producer knows it.", "epoch")
_NODE_ID = Column("node_id", _I32, False, "The node observed; MUST exist in nodes.node_id.")
_KIND = Column("kind", _STR, False, "One of the Kind enumeration: activation, gradient, input, weight, weight_grad, weight_update.")
_SLOT = Column(
    "slot",
    _STR,
    False,
    "Which tensor of the node: output/input index ('0', '1', or a dict key) for activation/gradient/input; parameter name ('weight', 'bias', ...) for weight kinds; '' if the node has one.",
)
_RUN_ID = Column(
    "run_id",
    _STR,
    True,
    "The manifest's run_id, in every row so that a directory of many runs reads as one table (spec 'Lakes'); null in traces written before 1.2.",
)
_CALL = Column("call", _I32, False, "0-based index of the node's invocation within the step (modules called several times per forward).")

NODES = TableDef(
    name="nodes",
    location="nodes.parquet",
    doc="The computation graph: one row per node. Edges are implied: A -> B wherever a tensor name in A.outputs appears in B.inputs.",
    key=("node_id",),
    columns=(
        Column("node_id", _I32, False, "Stable identifier, unique within the trace, >= 0."),
        Column("name", _STR, False, "Framework-native name (PyTorch module qualified name, ONNX node name)."),
        Column(
            "scope",
            _STR,
            False,
            "Canonical hierarchical path joining frameworks: the PyTorch module qualified name ('layer1.0.conv1'); '' when unknown.",
        ),
        Column("op_type", _STR, False, "Operation or module class ('Conv2d', 'Conv', 'ReLU', ...)."),
        Column("op_class", _STR, True, "One of the OpClass enumeration (what the node computes, framework-independent); null when the producer cannot tell. Since 1.1."),
        Column("parent", _I32, True, "node_id of the enclosing container node, null for top-level nodes."),
        Column("container", _BOOL, False, "True for hierarchy-only nodes (a module that contains others); they take no part in edges."),
        Column("inputs", pa.list_(_STR), False, "Names of the tensors the node consumes (in argument order)."),
        Column("outputs", pa.list_(_STR), False, "Names of the tensors the node produces."),
        Column("attributes", _STR, True, "JSON object of the node's attributes (kernel size, stride, ...)."),
        Column("param_count", _I64, False, "Number of parameter elements owned directly by the node (not by its children).", "elements"),
        Column("order", _I32, True, "Execution order of the node's first invocation (0-based), null if it never ran."),
        Column("note", _STR, True, "Free text, e.g. why a node is opaque (an ONNX If/Loop whose inner tensors are not captured)."),
        _RUN_ID,
    ),
)

RECORDS = TableDef(
    name="records",
    location="records/rank-<R>/part-<NNNNN>.parquet",
    doc="Observations: one row per (step, phase, rank, node, kind, slot, call).",
    key=("step", "phase", "rank", "node_id", "kind", "slot", "call"),
    columns=(
        _STEP,
        _PHASE,
        _RANK,
        _NODE_ID,
        _KIND,
        _SLOT,
        _CALL,
        Column("seq", _I32, True, "Position of this observation in execution order within the step (ties broken by node_id)."),
        Column(
            "dtype",
            _STR,
            False,
            "Element type of the observed tensor: float64, float32, float16, bfloat16, int64, int32, int16, int8, uint8, bool, ...",
        ),
        Column("shape", pa.list_(_I64), False, "Shape of the observed tensor ([] for a 0-d tensor)."),
        Column("numel", _I64, False, "Number of elements (product of shape).", "elements"),
        Column("nan_count", _I64, False, "Elements that are NaN.", "elements"),
        Column("inf_count", _I64, False, "Elements that are +Inf or -Inf.", "elements"),
        Column("zero_count", _I64, False, "Elements exactly equal to 0 (-0.0 included).", "elements"),
        Column("pos_count", _I64, False, "Elements strictly greater than 0 (+Inf included).", "elements"),
        Column("mean", _F64, True, "Mean of the finite elements; null if there are none.", "tensor units"),
        Column("std", _F64, True, "Population standard deviation (ddof = 0) of the finite elements; null if none.", "tensor units"),
        Column("min", _F64, True, "Smallest finite element; null if none.", "tensor units"),
        Column("max", _F64, True, "Largest finite element; null if none.", "tensor units"),
        Column("abs_mean", _F64, True, "Mean of |x| over the finite elements; null if none.", "tensor units"),
        Column("l2", _F64, True, "Euclidean norm sqrt(sum x^2) over the finite elements; 0 if none.", "tensor units"),
        Column("median", _F64, True, "Lower median of the finite elements (element of rank floor((n-1)/2)); optional.", "tensor units"),
        Column("hist_scheme", _STR, True, "Histogram binning: symlog, linear, abs_linear or edges; null if no histogram."),
        Column("hist_lo", _F64, True, "Binning parameter lo (see 'Histograms').", "tensor units"),
        Column("hist_hi", _F64, True, "Binning parameter hi (see 'Histograms').", "tensor units"),
        Column("hist_counts", pa.list_(_I64), True, "Counts per bin, ascending by value.", "elements"),
        Column("hist_edges", pa.list_(_F64), True, "Scheme 'edges' only: the n + 1 ascending, finite bin edges (since 1.1); null otherwise.", "tensor units"),
        Column("channel_axis", _I32, True, "Axis of the per-channel vectors, non-negative: 1 for NCHW/NC... layouts, len(shape) - 1 for channels-last."),
        Column("channel_pos_frac", pa.list_(_F32), True, "Per channel: fraction of elements > 0 (dead-unit detection)."),
        Column("channel_mean", pa.list_(_F32), True, "Per channel: mean of the finite elements.", "tensor units"),
        Column("mat_trace", _F64, True, "2-D weights only: trace (sum of the diagonal).", "tensor units"),
        Column("mat_spectral", _F64, True, "2-D weights only: spectral norm (largest singular value).", "tensor units"),
        Column("mat_sv_mean", _F64, True, "2-D weights only: mean of the singular values.", "tensor units"),
        Column("mat_sv_var", _F64, True, "2-D weights only: population variance (ddof = 0) of the singular values.", "tensor units^2"),
        _RUN_ID,
    ),
)

SCALARS = TableDef(
    name="scalars",
    location="scalars/rank-<R>/part-<NNNNN>.parquet",
    doc="Named scalar series: loss, learning rate, accuracy, ...",
    key=("step", "phase", "rank", "name"),
    columns=(
        _STEP,
        _EPOCH,
        _PHASE,
        _RANK,
        Column("name", _STR, False, "Series name, e.g. 'loss', 'lr', 'accuracy'."),
        Column("value", _F64, False, "The value (NaN and Inf allowed)."),
        Column("wall_time", _F64, True, "Seconds since the Unix epoch when the value was logged.", "s"),
        _RUN_ID,
    ),
)

PREDICTIONS = TableDef(
    name="predictions",
    location="predictions/rank-<R>/part-<NNNNN>.parquet",
    doc="Optional: per-sample labels and predicted classes, for confusion matrices.",
    columns=(
        _STEP,
        _EPOCH,
        _PHASE,
        _RANK,
        Column("y_true", _I64, False, "True class index."),
        Column("y_pred", _I64, False, "Predicted class index."),
        _RUN_ID,
    ),
)

TENSORS = TableDef(
    name="tensors",
    location="tensors/rank-<R>/<node_id>-<kind>-<call>-<slot>-<NNNNN>.arrow",
    doc=(
        "Optional raw values, for exact diffs of small runs. One file per observed tensor "
        "identity; each row is one step. The values column has the canonical extension type "
        "arrow.fixed_shape_tensor(value_type, shape) with the tensor's own element type "
        "(bfloat16 widened to float32, exactly)."
    ),
    key=("step", "phase", "rank", "node_id", "kind", "slot", "call"),
    columns=(
        _STEP,
        _PHASE,
        _RANK,
        _NODE_ID,
        _KIND,
        _SLOT,
        _CALL,
        Column("dtype", _STR, False, "Element type of the original tensor (before any widening)."),
        # The values column's type varies per file; it is declared here with a placeholder
        # and checked by the validator as 'any arrow.fixed_shape_tensor'.
        Column("values", pa.null(), False, "arrow.fixed_shape_tensor(value_type, shape): the tensor, row-major."),
    ),
)

FINDINGS = TableDef(
    name="findings",
    location="findings/<analyzer>.parquet",
    doc="Optional: results of analyzers, written back into the trace.",
    columns=(
        Column("analyzer", _STR, False, "Name of the analyzer that produced the finding."),
        Column("code", _STR, False, "Stable machine-readable code, e.g. 'dead-layer', 'nan-origin'."),
        Column("severity", _STR, False, "One of the Severity enumeration: info, warning, error."),
        Column("node_id", _I32, True, "The node concerned, null for run-level findings."),
        Column("node", _STR, True, "The node's name (denormalised for readability)."),
        Column("step_first", _I64, True, "First step of the evidence.", "step"),
        Column("step_last", _I64, True, "Last step of the evidence.", "step"),
        Column("metric", _STR, True, "Name of the measured quantity."),
        Column("value", _F64, True, "Measured value."),
        Column("threshold", _F64, True, "Threshold the value was compared with."),
        Column("message", _STR, False, "One human-readable sentence."),
        _RUN_ID,
    ),
)

#: Every table, by name, in spec order.
TABLES: dict[str, TableDef] = {t.name: t for t in (NODES, RECORDS, SCALARS, PREDICTIONS, TENSORS, FINDINGS)}

#: manifest.json fields: name -> (JSON type, required, meaning).
MANIFEST_FIELDS: dict[str, tuple[str, bool, str]] = {
    "format": ("string", True, f"Always '{FORMAT_NAME}'."),
    "format_version": ("string", True, "'MAJOR.MINOR' of the spec the trace conforms to."),
    "run_id": ("string", True, "Identifier of the run, unique across runs (a UUID by default)."),
    "created": ("string", True, "ISO 8601 UTC time the trace was created."),
    "complete": ("boolean", True, "False while a writer is open; set true when every writer closed cleanly."),
    "producer": ("object", True, "{'adapter': str, 'framework': str, 'framework_version': str, 'tracefmt_version': str, ...}"),
    "model": ("string", False, "Human-readable model name."),
    "world_size": ("integer", False, "Number of ranks that write records (default 1)."),
    "metadata": ("object", False, "Free-form JSON (hyper-parameters, ORT provider, ...)."),
}


def schema_document(table: TableDef) -> dict:
    """Machine-readable description of ``table`` (the content of ``spec/schema/<name>.json``)."""
    return {
        "table": table.name,
        "location": table.location,
        "format_version": FORMAT_VERSION,
        "doc": table.doc,
        "key": list(table.key),
        "columns": [
            {
                "name": c.name,
                "type": type_name(c.type) if c.type != pa.null() else "arrow.fixed_shape_tensor",
                "nullable": c.nullable,
                "unit": c.unit,
                "doc": c.doc,
            }
            for c in table.columns
        ],
    }


def spec_column_table(table: TableDef) -> str:
    """The Markdown column table of ``table`` as it appears in spec/TRACE_FORMAT.md."""
    lines = ["| column | Arrow type | nullable | unit | meaning |", "|---|---|---|---|---|"]
    for c in table.columns:
        t = type_name(c.type) if c.type != pa.null() else "arrow.fixed_shape_tensor"
        doc = c.doc.replace("|", "\\|")  # a literal | would end the Markdown cell
        lines.append(f"| `{c.name}` | `{t}` | {'yes' if c.nullable else 'no'} | {c.unit} | {doc} |")
    return "\n".join(lines)


def manifest_table() -> str:
    """The Markdown table of manifest.json fields."""
    lines = ["| field | JSON type | required | meaning |", "|---|---|---|---|"]
    for name, (jtype, required, doc) in MANIFEST_FIELDS.items():
        lines.append(f"| `{name}` | {jtype} | {'yes' if required else 'no'} | {doc} |")
    return "\n".join(lines)


def write_schema_files(spec_dir: Path) -> list[Path]:
    """Regenerate ``spec/schema/*.json`` and the generated regions of ``TRACE_FORMAT.md``."""
    out = []
    schema_dir = spec_dir / "schema"
    schema_dir.mkdir(parents=True, exist_ok=True)
    for table in TABLES.values():
        p = schema_dir / f"{table.name}.json"
        p.write_text(json.dumps(schema_document(table), indent=2) + "\n")
        out.append(p)
    p = schema_dir / "manifest.json"
    p.write_text(
        json.dumps({"fields": {k: {"type": v[0], "required": v[1], "doc": v[2]} for k, v in MANIFEST_FIELDS.items()}}, indent=2) + "\n"
    )
    out.append(p)
    spec = spec_dir / "TRACE_FORMAT.md"
    if spec.exists():
        spec.write_text(render_generated_regions(spec.read_text()))
        out.append(spec)
    return out


def render_generated_regions(text: str) -> str:
    """Replace each ``<!-- BEGIN GENERATED: x -->...<!-- END GENERATED: x -->`` region."""
    import re

    def repl(m: re.Match) -> str:
        name = m.group(1)
        body = manifest_table() if name == "manifest" else spec_column_table(TABLES[name])
        return f"<!-- BEGIN GENERATED: {name} -->\n{body}\n<!-- END GENERATED: {name} -->"

    return re.sub(r"<!-- BEGIN GENERATED: (\w+) -->.*?<!-- END GENERATED: \1 -->", repl, text, flags=re.S)


if __name__ == "__main__":  # pragma: no cover - maintenance entry point
    for path in write_schema_files(Path(__file__).resolve().parent.parent / "spec"):
        print(path)
