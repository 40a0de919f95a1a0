"""TraceWriter: append-only, crash-safe writing of a trace (spec 'Layout', 'Crash semantics')."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from ._conform import to_batch
from .errors import TraceError, UsageError
from .manifest import MANIFEST, new_manifest, read_manifest, write_manifest
from .rolling import Publisher, RollingSink, WriterOptions, recover_open_segments, repeated_string, write_closed
from .schema import NODES, PREDICTIONS, RECORDS, SCALARS, TABLES, TENSORS
from .segments import NODES_FILES, rank_dir_name

__all__ = ["TraceWriter", "WriterOptions"]

_SEGMENT_TABLES = (RECORDS, SCALARS, PREDICTIONS)


class TraceWriter:
    """Write one rank's part of a trace: nodes, records, scalars, predictions, raw tensors.

    Rows are buffered per table and written as Arrow record batches to a hidden open
    segment ``<table>/rank-<R>/.part-NNNNN.open.arrow`` (crash-safe: a killed writer
    leaves every written batch readable by tracefmt). The open segment is rolled by age,
    steps or size (:class:`WriterOptions`) into a closed segment ``part-NNNNN.parquet``,
    written under a hidden name and renamed, so outside engines see a live run within
    ``roll_seconds`` and never a partial file. Buffers are flushed when they reach
    ``batch_rows`` rows, every ``flush_interval`` seconds from a background timer, and on
    :meth:`close`. All methods are thread-safe. Rank 0 owns ``manifest.json`` (written
    atomically at open and on close) and ``nodes.parquet``. Every row carries the run's
    ``run_id`` so that many traces read as one table (spec 'Lakes').

    Storage: a local POSIX directory (or a mounted one with atomic rename). To put a run
    on object storage, write it locally and upload the closed segments (files not starting
    with ``.``) as they appear; readers accept ``s3://``, ``gs://`` and ``file://`` URIs.

    Args:
        path: The trace directory; created if missing.
        rank: This process's rank. Defaults to 0.
        world_size: Number of ranks writing. Defaults to 1.
        mode: ``'create'`` (refuse an existing trace), ``'overwrite'`` (delete it first)
            or ``'append'`` (add segments to it). Defaults to ``'create'``.
        run_id: Run identifier. Defaults to a new UUID.
        producer: Producer description merged into the manifest.
        model: Model name for the manifest.
        metadata: Free-form JSON-serialisable metadata.
        options: Batching, rolling and encoding of segments. Defaults to
            ``WriterOptions()`` (roll every 5 s or 32 MiB, Parquet).
        segment_bytes: Overrides ``options.roll_bytes``.
        batch_rows: Overrides ``options.batch_rows``.
        flush_interval: Overrides ``options.flush_interval``.
        compression: Overrides ``options.compression``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        rank: int = 0,
        world_size: int = 1,
        mode: str = "create",
        run_id: str | None = None,
        producer: dict[str, Any] | None = None,
        model: str | None = None,
        metadata: dict[str, Any] | None = None,
        options: WriterOptions | None = None,
        segment_bytes: int | None = None,
        batch_rows: int | None = None,
        flush_interval: float | None = None,
        compression: str | None = None,
    ) -> None:
        opts = (options or WriterOptions()).with_overrides(
            roll_bytes=segment_bytes, batch_rows=batch_rows, flush_interval=flush_interval, compression=compression
        )
        self.options = opts
        self.path = Path(path)
        self.rank = int(rank)
        if mode not in ("create", "overwrite", "append"):
            raise UsageError(f"unknown writer mode {mode!r}; available: create, overwrite, append")
        if self.path.exists() and (self.path / MANIFEST).exists():
            if mode == "create" and self.rank == 0:
                raise UsageError(f"{self.path}: a trace already exists (use mode='overwrite' or 'append')")
            if mode == "overwrite" and self.rank == 0:
                shutil.rmtree(self.path)
        elif self.path.exists() and mode != "append" and self.rank == 0 and any(self.path.iterdir()):
            raise UsageError(f"{self.path}: exists and is not an empty directory or a trace")
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._closed = False
        if self.rank == 0:
            if mode == "append" and (self.path / MANIFEST).exists():
                self.manifest = read_manifest(self.path)
                self.manifest["complete"] = False
            else:
                self.manifest = new_manifest(run_id=run_id, producer=producer, model=model, world_size=world_size, metadata=metadata)
            write_manifest(self.path, self.manifest)
        else:
            self.manifest = {}
        self.run_id = self.manifest.get("run_id") or run_id or _run_id_on_disk(self.path)
        if mode == "append":
            # A killed writer's open segments become closed ones, so engines see their rows.
            for t in _SEGMENT_TABLES:
                recover_open_segments(self.path, t.name, opts, ranks={self.rank})
        self._publisher = Publisher(opts.publish_threads if opts.segment_format == "parquet" else 0)
        self._sinks = {
            t.name: RollingSink(self.path, t, self.rank, run_id=self.run_id, options=opts, publisher=self._publisher) for t in _SEGMENT_TABLES
        }
        self._tensor_files: dict[tuple, tuple[pa.NativeFile, ipc.RecordBatchFileWriter, pa.Schema]] = {}
        self._stop = threading.Event()
        self._background_error: Exception | None = None
        self._timer: threading.Thread | None = None
        if opts.flush_interval > 0:
            interval = min(opts.flush_interval, opts.roll_seconds or opts.flush_interval)
            self._timer = threading.Thread(target=self._flush_loop, args=(interval,), name="tracefmt-flush", daemon=True)
            self._timer.start()

    # -- context manager ---------------------------------------------------------------
    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -----------------------------------------------------------------------
    def write_nodes(self, nodes: Any) -> None:
        """Write (or replace) ``nodes.parquet`` atomically. Only rank 0 writes nodes.

        Args:
            nodes: Rows of the nodes table (RecordBatch, Table, column mapping or row dicts).
        """
        batch = to_batch(NODES, nodes)
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        ids = table.column("node_id").to_numpy()
        if len(np.unique(ids)) != len(ids):
            raise UsageError("nodes: column 'node_id' must be unique")
        if self.rank != 0:
            return
        if self.run_id is not None:
            table = table.set_column(
                table.schema.get_field_index("run_id"), NODES.schema.field("run_id"), repeated_string(self.run_id, table.num_rows)
            )
        write_closed(table, self.path, NODES.location, self.options)
        for older in NODES_FILES[1:]:  # an appended trace of format 1.0: one nodes file only
            (self.path / older).unlink(missing_ok=True)

    def append(self, table: str, data: Any) -> None:
        """Append rows to a partitioned table: ``'records'``, ``'scalars'`` or ``'predictions'``.

        Args:
            table: The table name.
            data: RecordBatch, Table, mapping of column -> values, or list of row dicts.
                Missing nullable columns become null; ``rank`` defaults to the writer's rank.
        """
        sink = self._sinks.get(table)
        if sink is None:
            raise UsageError(f"cannot append to table {table!r}; appendable tables: {', '.join(self._sinks)}")
        if isinstance(data, dict) and "rank" not in data:
            n = len(next(iter(data.values()))) if data else 0
            data = {**data, "rank": np.full(n, self.rank, dtype=np.int32)}
        elif isinstance(data, list) and data and isinstance(data[0], dict) and "rank" not in data[0]:
            data = [{**r, "rank": self.rank} for r in data]
        elif isinstance(data, (pa.Table, pa.RecordBatch)) and "rank" not in data.schema.names:
            data = data.append_column("rank", pa.array(np.full(data.num_rows, self.rank, dtype=np.int32)))
        batch = to_batch(TABLES[table], data)
        with self._lock:
            self._check_open()
            if sink.add(batch):
                sink.flush()

    def write_records(self, data: Any) -> None:
        """Append observation records (see :meth:`append`)."""
        self.append("records", data)

    def log_scalar(self, name: str, value: float, *, step: int, phase: str = "train", epoch: int | None = None) -> None:
        """Append one scalar value (wall time taken now)."""
        self.append(
            "scalars",
            {"step": [step], "epoch": [epoch], "phase": [str(phase)], "name": [name], "value": [float(value)], "wall_time": [time.time()]},
        )

    def write_tensor(
        self,
        values: np.ndarray,
        *,
        step: int,
        node_id: int,
        kind: str,
        slot: str = "",
        call: int = 0,
        phase: str = "train",
        dtype: str | None = None,
    ) -> None:
        """Store one tensor's raw values in the ``tensors`` table (canonical fixed-shape tensor).

        Values of one (node, kind, slot, call, shape, dtype) go to one file, a row per step.
        A zero-element tensor is not stored (Arrow's fixed-shape tensor needs at least one
        element): its record (shape, ``numel`` 0) already says everything about it.
        """
        from .stats import dtype_name

        a = np.ascontiguousarray(values)
        if a.size == 0:
            return
        if a.dtype == np.bool_:
            a = a.astype(np.uint8)
        value_type = pa.from_numpy_dtype(a.dtype)
        shape = tuple(int(s) for s in a.shape)
        key = (node_id, str(kind), str(slot), int(call), shape, str(a.dtype))
        with self._lock:
            self._check_open()
            entry = self._tensor_files.get(key)
            if entry is None:
                tensor_type = pa.fixed_shape_tensor(value_type, list(shape) if shape else [1])
                schema = pa.schema([f if f.name != "values" else pa.field("values", tensor_type, nullable=False) for f in TENSORS.schema])
                d = self.path / "tensors" / rank_dir_name(self.rank)
                d.mkdir(parents=True, exist_ok=True)
                safe_slot = "".join(ch if ch.isalnum() else "_" for ch in str(slot)) or "_"
                stem = f"{node_id}-{kind}-{call}-{safe_slot}"
                n = len(list(d.glob(f"{stem}-*.arrow")))
                f = pa.OSFile(str(d / f"{stem}-{n:05d}.arrow"), "wb")
                entry = (f, ipc.new_file(f, schema), schema)
                self._tensor_files[key] = entry
            _, writer, schema = entry
            tensor_type = schema.field("values").type
            storage = pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), max(1, a.size))
            row = pa.RecordBatch.from_arrays(
                [
                    pa.array([step], pa.int64()), pa.array([str(phase)]), pa.array([self.rank], pa.int32()),
                    pa.array([node_id], pa.int32()), pa.array([str(kind)]), pa.array([str(slot)]),
                    pa.array([call], pa.int32()), pa.array([dtype or dtype_name(values.dtype)]),
                    pa.ExtensionArray.from_storage(tensor_type, storage),
                ],
                schema=schema,
            )  # fmt: skip
            writer.write_batch(row)

    def update_metadata(self, **values: Any) -> None:
        """Merge ``values`` into the manifest's ``metadata`` and rewrite it (rank 0 only)."""
        if self.rank != 0:
            return
        with self._lock:
            self.manifest.setdefault("metadata", {}).update(values)
            write_manifest(self.path, self.manifest)

    # -- flushing and closing ----------------------------------------------------------
    def flush(self) -> None:
        """Write every buffered row to disk now, and wait until rolled segments are published."""
        with self._lock:
            for sink in self._sinks.values():
                sink.flush()
            self._publisher.drain()

    def _flush_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            with self._lock:
                if self._closed:
                    return
                try:
                    for sink in self._sinks.values():
                        sink.flush()
                except Exception as exc:  # noqa: BLE001 - handed to the writing thread, not printed by this one
                    self._background_error = exc
                    return  # writes still flush; the caller learns of the failure at its next call

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError(f"{self.path}: the trace writer is closed")
        if self._background_error is not None:
            exc, self._background_error = self._background_error, None
            raise exc

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def rows_written(self, table: str = "records") -> int:
        """Rows of ``table`` written to disk so far by this writer."""
        return self._sinks[table].rows_written

    def close(self) -> None:
        """Flush, close every segment (footers written) and mark the manifest complete."""
        with self._lock:
            if self._closed:
                return
            self._stop.set()
            try:
                for sink in self._sinks.values():
                    sink.close()
            finally:
                self._publisher.close()  # every rolled segment published before complete is set
            for f, w, _ in self._tensor_files.values():
                w.close()
                f.close()
            self._tensor_files.clear()
            self._closed = True
            if self.rank == 0:
                self.manifest["complete"] = True
                write_manifest(self.path, self.manifest)
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.join(timeout=5)


def _run_id_on_disk(path: Path) -> str | None:
    """The run_id of an existing manifest (a rank > 0 opening after rank 0), else None."""
    try:
        return str(read_manifest(path).get("run_id") or "") or None
    except (OSError, TraceError):
        return None
