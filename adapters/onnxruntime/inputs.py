"""Model inputs: checking the caller's feeds, random feeds and feeds read from files."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tracefmt.errors import TraceNotFoundError, UsageError

from .graph import GraphInfo

__all__ = ["as_batches", "check_feed", "random_feed", "read_array"]


def _np_dtype(elem_type: int) -> np.dtype:
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def as_batches(inputs: Any) -> Iterator[Mapping[str, Any]]:
    """Yield one feed dict per step from a dict (one step) or an iterable of dicts."""
    if isinstance(inputs, Mapping):
        yield inputs
        return
    if isinstance(inputs, Iterable) and not isinstance(inputs, (str, bytes)):
        for i, feed in enumerate(inputs):
            if not isinstance(feed, Mapping):
                raise UsageError(f"inputs: batch {i} must be a dict of input name -> array, got {type(feed).__name__}")
            yield feed
        return
    raise UsageError(f"inputs must be a dict of input name -> array or a list of such dicts, got {type(inputs).__name__}")


def _to_numpy(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        return value.detach().cpu().numpy()
    if isinstance(value, list) and value and isinstance(value[0], np.ndarray):
        return value  # a sequence input
    return np.asarray(value)


def check_feed(info: GraphInfo, feed: Mapping[str, Any], *, step: int) -> dict[str, Any]:
    """Validate one step's feed against the model's inputs and convert it to numpy.

    Numeric arrays are cast to the element type the model declares (a float64 array for a
    float input is converted, not refused); names are checked both ways.

    Raises:
        UsageError: a required input is missing or an unknown name is given.
    """
    required = {i.name: i for i in info.required_inputs}
    optional = {i.name: i for i in info.optional_inputs}
    missing = [n for n in required if n not in feed]
    if missing:
        raise UsageError(
            f"step {step}: missing model input(s) {', '.join(missing)}; the model's inputs are: {', '.join(required) or '(none)'}"
        )
    unknown = [n for n in feed if n not in required and n not in optional]
    if unknown:
        raise UsageError(
            f"step {step}: unknown input(s) {', '.join(unknown)}; the model's inputs are: {', '.join(list(required) + list(optional))}"
        )
    out = {}
    for name, value in feed.items():
        arr = _to_numpy(value)
        vi = required.get(name) or optional[name]
        if isinstance(arr, np.ndarray) and vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            want = _np_dtype(vi.type.tensor_type.elem_type)
            if arr.dtype != want and arr.dtype.kind in "biuf" and want.kind in "biuf":
                arr = arr.astype(want)
        out[name] = arr
    return out


def random_feed(info: GraphInfo, *, seed: int = 0, dim: int = 1, high: int = 10) -> dict[str, np.ndarray]:
    """A random feed for every required input, from the declared types and shapes.

    Symbolic or unknown dimensions become ``dim``; a declared 0 stays 0. Floats are standard normal; integers
    uniform in ``[0, high)`` (so token ids stay inside small vocabularies); bools fair coins.

    Args:
        info: The loaded graph.
        seed: Seed of the random generator. Defaults to 0.
        dim: Size used for symbolic dimensions. Defaults to 1.
        high: Exclusive upper bound of integer values. Defaults to 10.

    Raises:
        UsageError: an input is not a tensor (sequences, maps, optionals need real data).
    """
    rng = np.random.default_rng(seed)
    feed = {}
    for vi in info.required_inputs:
        if not vi.type.HasField("tensor_type"):
            raise UsageError(f"input {vi.name!r} is not a tensor; give its value with --input {vi.name}=FILE")
        tt = vi.type.tensor_type
        # A declared 0 is a real (empty) dimension; only symbolic or unset ones become ``dim``.
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else dim for d in tt.shape.dim]
        dtype = _np_dtype(tt.elem_type)
        if dtype.kind == "f":
            feed[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            feed[vi.name] = rng.integers(0, high, size=shape).astype(dtype)
        elif dtype.kind == "b":
            feed[vi.name] = rng.random(shape) < 0.5
        else:
            raise UsageError(f"input {vi.name!r} has element type {dtype}; give its value with --input {vi.name}=FILE")
    return feed


def read_array(path: str | Path) -> Any:
    """Read an input value from ``.npy``, ``.npz`` (its only array) or ONNX ``.pb`` (TensorProto or SequenceProto)."""
    p = Path(path)
    if not p.is_file():
        raise TraceNotFoundError(f"{p}: no such input file")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(p, allow_pickle=False)
        if suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                if len(z.files) != 1:
                    raise UsageError(f"{p}: holds arrays {', '.join(z.files)}; give one array per --input")
                return z[z.files[0]]
        if suffix == ".pb":
            return _read_pb(p)
    except (ValueError, OSError) as exc:
        raise UsageError(f"{p}: not a readable array ({exc})") from None
    raise UsageError(f"{p}: unsupported input file type {suffix or '(none)'}; use .npy, .npz or .pb")


def _read_pb(path: Path) -> Any:
    import onnx
    from onnx import numpy_helper

    data = path.read_bytes()
    tensor = onnx.TensorProto()
    try:
        tensor.ParseFromString(data)
        if tensor.data_type:
            return numpy_helper.to_array(tensor)
    except Exception:  # protobuf DecodeError: try the sequence form next
        pass
    seq = onnx.SequenceProto()
    try:
        seq.ParseFromString(data)
    except Exception as exc:
        raise UsageError(f"{path}: not an ONNX TensorProto or SequenceProto ({exc})") from None
    return numpy_helper.to_list(seq)
