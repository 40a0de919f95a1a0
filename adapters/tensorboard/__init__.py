"""TensorBoard in and out: event files to a trace, a trace to event files, live mirroring.

- :func:`import_tensorboard` reads a TensorBoard log directory with TensorBoard's own
  event-file reader (``EventAccumulator``) and writes a conforming trace: scalars, histograms
  (bucket limits kept exactly, histogram scheme ``edges``) and the graph where present.
- :func:`export_tensorboard` writes a trace's scalars, per-layer histograms and statistic
  series as TensorBoard event files (TensorBoard's own ``EventFileWriter``).
- :class:`TensorBoardMirror` does the same row by row while a run is recorded
  (``TorchTracer(..., tensorboard=LOGDIR)``).

Tag names are described in :mod:`tracefmt.adapters.tensorboard.tags`.
"""

from .export import TensorBoardMirror, export_tensorboard
from .reader import import_tensorboard

__all__ = ["import_tensorboard", "export_tensorboard", "TensorBoardMirror"]
