"""ONNX Runtime sessions for the chunks of a traced model."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from tracefmt.enums import coerce
from tracefmt.errors import MissingDependencyError, UsageError

from .graph import GraphInfo

__all__ = ["Optimization", "import_ort", "SessionFactory"]


class Optimization(StrEnum):
    """ONNX Runtime graph optimisation level used for the traced sessions."""

    DISABLED = "disabled"  #: every ONNX node runs as the graph states it (the default)
    BASIC = "basic"
    EXTENDED = "extended"
    ALL = "all"


def import_ort() -> Any:
    """Import onnxruntime, or raise :class:`MissingDependencyError` naming the extra."""
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError("onnxruntime", "onnx", "tracing ONNX models") from None
    return onnxruntime


class SessionFactory:
    """Creates the sessions of one trace: same providers and options for every chunk.

    Initializers kept in external files (models over the 2 GB protobuf limit) are never
    loaded into the protos built here: ONNX Runtime reads them from the model's directory.

    Args:
        info: The loaded graph.
        providers: Execution providers, in priority order.
        optimization: Graph optimisation level.
        threads: Intra-op threads; 0 lets ONNX Runtime choose.
    """

    def __init__(self, info: GraphInfo, *, providers: tuple[str, ...], optimization: str | Optimization, threads: int = 0) -> None:
        ort = import_ort()
        available = ort.get_available_providers()
        unknown = [p for p in providers if p not in available]
        if unknown:
            raise UsageError(f"execution provider(s) {', '.join(unknown)} not available; available: {', '.join(available)}")
        # ONNX Runtime's process-wide logger prints warnings (and its own copy of errors)
        # to stderr before the tracer's one-line error; only fatal messages get through.
        ort.set_default_logger_severity(4)
        self.ort = ort
        self.info = info
        self.providers = list(providers)
        self.optimization = coerce(Optimization, optimization, what="optimization level")
        self.threads = threads

    def options(self) -> Any:
        """Session options with the chosen optimisation level."""
        ort = self.ort
        level = {
            Optimization.DISABLED: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            Optimization.BASIC: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            Optimization.EXTENDED: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            Optimization.ALL: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.optimization]
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        so.log_severity_level = 3
        if self.threads:
            so.intra_op_num_threads = self.threads
        # Each chunk's session runs once per step; an arena kept per session would hold
        # its high-water mark for the whole trace, so memory is returned after each run.
        so.enable_cpu_mem_arena = False
        so.enable_mem_pattern = False
        # Between two chunk runs the tracer computes statistics on this thread: worker
        # threads left spinning for work would burn the cores it needs (about half of
        # the capture's CPU time when they spun).
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        return so

    def create(self, model: Any) -> Any:
        """An InferenceSession for ``model`` (a ModelProto built from the traced graph)."""
        ort = self.ort
        so = self.options()
        if self.info.has_external_data and self.info.path is not None:
            # The chunk's proto carries only references; ONNX Runtime reads (maps) the
            # external files from the original model's directory itself.
            so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(self.info.path.resolve().parent))
        try:
            return ort.InferenceSession(model.SerializeToString(), sess_options=so, providers=self.providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
            where = self.info.path or "model"
            raise UsageError(
                f"{where}: ONNX Runtime cannot load the model ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]})"
            ) from None
