"""Bring user data into a table's exact Arrow schema (shared by the writer and reader)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .enums import Kind, Phase
from .errors import TraceFormatError, UsageError
from .schema import TableDef

__all__ = ["to_batch", "conform_table", "ENUM_COLUMNS"]

#: Columns whose values come from an enumeration.
ENUM_COLUMNS: dict[str, tuple[str, ...]] = {
    "kind": tuple(k.value for k in Kind),
    "phase": tuple(p.value for p in Phase),
}
_ENUM_SETS = {name: pa.array(values) for name, values in ENUM_COLUMNS.items()}


def _is_float(t: pa.DataType) -> bool:
    # NaN is data in floating columns (a NaN loss, a NaN statistic): never read it as null.
    return pa.types.is_floating(t) or (pa.types.is_list(t) and pa.types.is_floating(t.value_type))


def _column_names(data: Any) -> list[str]:
    if isinstance(data, (pa.RecordBatch, pa.Table)):
        return data.schema.names
    return list(data)


def to_batch(table: TableDef, data: Any, *, check_enums: bool = True) -> pa.Table:
    """Convert ``data`` to a table with exactly ``table``'s schema.

    Args:
        table: The table definition.
        data: A RecordBatch, Table, mapping of column name to values, or list of row dicts.
        check_enums: Refuse values outside the enumerations. Defaults to True.

    Raises:
        UsageError: An unknown column, a missing required column, a null in a non-nullable
            column, a value that cannot be converted, or an unknown enumeration value.
    """
    if isinstance(data, (pa.RecordBatch, pa.Table)) and (
        data.schema.equals(table.schema) or (data.schema.names == table.names and data.schema.types == list(table.types))
    ):
        return _exact(table, data, check_enums)
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)) and (not data or isinstance(data[0], Mapping)):
        rows = list(data)
        data = {c.name: [r.get(c.name) for r in rows] for c in table.columns if any(c.name in r for r in rows)}
        unknown = sorted({k for r in rows for k in r} - set(table.names))
    else:
        unknown = sorted(set(_column_names(data)) - set(table.names))
    if unknown:
        raise UsageError(f"{table.name}: unknown column(s) {', '.join(unknown)}; columns are: {', '.join(table.names)}")
    present = set(_column_names(data))
    length = None
    arrays = []
    for col in table.columns:
        if col.name in present:
            values = data.column(col.name) if isinstance(data, (pa.RecordBatch, pa.Table)) else data[col.name]
            try:
                arr = (
                    values
                    if isinstance(values, (pa.Array, pa.ChunkedArray))
                    else pa.array(values, type=col.type, from_pandas=not _is_float(col.type))
                )
                if arr.type != col.type:
                    arr = arr.cast(col.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError) as exc:
                raise UsageError(f"{table.name}: column '{col.name}' cannot be stored as {col.type}: {exc}") from None
            if not col.nullable and arr.null_count:
                raise UsageError(f"{table.name}: column '{col.name}' must not contain nulls ({arr.null_count} found)")
            if check_enums and col.name in _ENUM_SETS and len(arr):
                bad = pc.filter(arr, pc.invert(pc.is_in(arr, value_set=_ENUM_SETS[col.name])))
                if len(bad):
                    raise UsageError(
                        f"{table.name}: column '{col.name}' has unknown value {bad[0].as_py()!r}; "
                        f"allowed: {', '.join(ENUM_COLUMNS[col.name])}"
                    )
        elif col.nullable:
            arr = None
        else:
            raise UsageError(f"{table.name}: missing required column '{col.name}'")
        if arr is not None:
            if length is not None and len(arr) != length:
                raise UsageError(f"{table.name}: column '{col.name}' has {len(arr)} values, expected {length}")
            length = len(arr)
        arrays.append(arr)
    length = length or 0
    arrays = [a if a is not None else pa.nulls(length, type=c.type) for a, c in zip(arrays, table.columns)]
    return pa.Table.from_arrays(arrays, schema=table.schema)


def conform_table(data: pa.Table, schema: pa.Schema, *, where: str) -> pa.Table:
    """Reorder ``data`` to ``schema``, add missing columns as nulls, cast where lossless.

    Used by the reader so that segments written by older or other producers (fewer or extra
    columns) read as one table. Raises TraceFormatError naming ``where`` and the column when
    a column has an incompatible type.
    """
    arrays = []
    for f in schema:
        if f.name in data.schema.names:
            col = data.column(f.name)
            if col.type != f.type:
                try:
                    col = col.cast(f.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise TraceFormatError(f"{where}: column '{f.name}' has type {col.type}, expected {f.type} ({exc})") from None
            arrays.append(col)
        else:
            arrays.append(pa.nulls(data.num_rows, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _exact(table: TableDef, data: pa.RecordBatch | pa.Table, check_enums: bool) -> pa.Table:
    """Fast path of :func:`to_batch` for data already in the table's column names and types.

    This runs once per append of every adapter, so it does a handful of C++ calls only.
    """
    for i in _required_indices(table):
        if data.column(i).null_count:
            col = table.columns[i]
            raise UsageError(f"{table.name}: column '{col.name}' must not contain nulls ({data.column(i).null_count} found)")
    if check_enums and len(data):
        for name, value_set in _ENUM_SETS.items():
            if name in table.names:
                arr = data.column(name)
                if pc.index_in(arr, value_set=value_set).null_count:
                    bad = pc.filter(arr, pc.invert(pc.is_in(arr, value_set=value_set)))
                    raise UsageError(
                        f"{table.name}: column '{name}' has unknown value {bad[0].as_py()!r}; allowed: {', '.join(ENUM_COLUMNS[name])}"
                    )
    if isinstance(data, pa.Table) and data.schema.equals(table.schema, check_metadata=True):
        return data
    # Same names and types: only the field nullability and schema metadata change (no copy).
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([pa.RecordBatch.from_arrays(data.columns, schema=table.schema)])
    return pa.Table.from_arrays(data.columns, schema=table.schema)


_REQUIRED: dict[str, tuple[int, ...]] = {}


def _required_indices(table: TableDef) -> tuple[int, ...]:
    idx = _REQUIRED.get(table.name)
    if idx is None:
        idx = _REQUIRED[table.name] = tuple(i for i, c in enumerate(table.columns) if not c.nullable)
    return idx
