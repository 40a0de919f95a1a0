"""The native reduction and its numpy twin give bit-identical statistics; the twin runs without the build."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tracefmt.histogram import DEFAULT_BINNING, FASTAI_BINNING, Binning, histogram
from tracefmt.reduction import channel_sums, native_available, reduce
from tracefmt.stats import channel_stats, tensor_stats

BINNINGS = [
    None,
    DEFAULT_BINNING,
    FASTAI_BINNING,
    Binning("linear", -2.0, 2.0, 7),
    Binning("symlog", 1e-3, 1e3, 25),
    Binning("symlog", 1e-3, 1e3, 3001),  # edges closer than the kernel's keys: histogram in numpy
    Binning.from_edges([-3.0, -0.5, 0.0, 0.25, 1.0, 4.0]),
]


@np.errstate(over="ignore", invalid="ignore")
def _arrays() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    m = DEFAULT_BINNING.magnitude_edges()
    m32 = m.astype(np.float32)
    edges = np.concatenate([m, -m, np.nextafter(m32, 0), np.nextafter(m32, np.inf), -np.nextafter(m32, np.inf)])
    wide = rng.standard_normal(5003) * 10.0 ** rng.integers(-40, 40, 5003)
    bf16 = (rng.standard_normal(301).astype(np.float32).view(np.uint32) & 0xFFFF0000).view(np.float32)  # bfloat16 values
    specials = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-6, -1e-6, 1e6, -1e6, 5e-324, -5e-324, 1e-310, 1.7e308, -1.7e308]
    return [
        rng.standard_normal(10_001).astype(np.float32),
        edges.astype(np.float32),
        edges,
        wide,
        wide.astype(np.float32),  # overflows to +-inf, underflows to denormals and zeros
        np.array(specials),
        np.array(specials, dtype=np.float32),
        np.array([], dtype=np.float32),
        np.array([], dtype=np.float64),
        np.array(3.5, dtype=np.float32),
        np.array(-0.0),
        (rng.standard_normal(77) * 3).astype(np.float16),
        bf16,
        np.full(17, np.nan, dtype=np.float32),
        np.full(9, -0.0, dtype=np.float32),
        np.full(1001, 1e30, dtype=np.float32) + np.arange(1001, dtype=np.float32) * 1e24,  # cancellation: second pass
        rng.standard_normal(999) * 1e300,  # near the float64 range
        np.array([1e-320, -3e-321, 4e-323]),  # only denormals
        rng.integers(-5, 9, (4, 6)),
        np.array([True, False, True]),
    ]


def _same(a, b) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b)) and np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_native_kernel_is_built():
    # The test environment has a C compiler: a silently skipped build would test the twin twice.
    assert native_available()


@pytest.mark.parametrize("binning", BINNINGS, ids=lambda b: "none" if b is None else f"{b.scheme}-{b.bins}")
def test_native_and_numpy_are_bit_identical(binning):
    for i, x in enumerate(_arrays()):
        a, b = reduce(x, binning, native=True), reduce(x, binning, native=False)
        for field in a.__dataclass_fields__:
            assert _same(getattr(a, field), getattr(b, field)), (i, field, getattr(a, field), getattr(b, field))
        sa, sb = tensor_stats(x, binning=binning, native=True), tensor_stats(x, binning=binning, native=False)
        assert sa.keys() == sb.keys()
        for k in sa:
            assert _same(
                np.asarray(sa[k], dtype=object if sa[k] is None else None), np.asarray(sb[k], dtype=object if sb[k] is None else None)
            ), (i, k)
        if binning is not None:
            assert a.hist.tolist() == histogram(x, binning).tolist(), i


def test_native_histogram_on_every_float32_key():
    keys = np.arange(1 << 16, dtype=np.uint32) << 16
    x = np.concatenate([keys, keys | 0x7FFF, keys | 0xFFFF]).view(np.float32)
    for binning in (DEFAULT_BINNING, Binning("symlog", 1e-3, 1e3, 25), Binning("symlog", 0.5, 2.0, 5)):  # NaN payloads included
        assert reduce(x, binning, native=True).hist.tolist() == histogram(x, binning).tolist()
        assert reduce(x.astype(np.float64), binning, native=True).hist.tolist() == histogram(x.astype(np.float64), binning).tolist()


def test_statistics_match_their_definitions():
    rng = np.random.default_rng(3)
    for x in (rng.standard_normal(4097) * 7 + 3, rng.standard_normal(999) * 1e300, np.array([1e308, -1e308, 1e307, 0.0])):
        s = tensor_stats(x, binning=None)
        scale = np.max(np.abs(x))
        g = x / scale
        assert s["mean"] == pytest.approx(np.mean(g) * scale, rel=1e-12, abs=1e-12 * scale)
        assert s["std"] == pytest.approx(np.std(g) * scale, rel=1e-12)
        assert s["abs_mean"] == pytest.approx(np.mean(np.abs(g)) * scale, rel=1e-12)
        assert np.isfinite(s["l2"]) and s["l2"] == pytest.approx(np.sqrt(np.sum(g * g)) * scale, rel=1e-12)


def test_channel_sums_are_bit_identical():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5, 7, 2)).astype(np.float32)
    x[0, 1, 2, 1], x[2, 4, 0, 0], x[1, 0, 6, 1] = np.nan, np.inf, -0.0
    for a in (x, x.astype(np.float64) * 1e300, rng.integers(-3, 3, (4, 9)), np.ones((2, 11, 3), np.float16)):
        for axis in range(a.ndim):
            n, p = channel_sums(a, axis, native=True), channel_sums(a, axis, native=False)
            assert _same(n.sums, p.sums) and _same(n.finite, p.finite) and _same(n.positive, p.positive), (a.dtype, axis)
    ref = channel_stats(x, axis=1)
    moved = np.moveaxis(x, 1, 0).reshape(5, -1).astype(np.float64)
    want = [np.mean(r[np.isfinite(r)]) for r in moved]
    np.testing.assert_allclose(ref["channel_mean"], want, rtol=1e-6)


def test_without_the_kernel_the_numpy_twin_runs_and_says_so_once():
    code = (
        "import sys, warnings; sys.modules['tracefmt._stats'] = None\n"  # as if the extension was never built
        "import numpy as np\n"
        "from tracefmt.reduction import native_available, native_status\n"
        "from tracefmt.stats import tensor_stats\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    a = tensor_stats(np.arange(10.0)); b = tensor_stats(np.ones(3))\n"
        "assert not native_available() and a['mean'] == 4.5 and b['std'] == 0.0\n"
        "print(len(w), native_status())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("1 numpy fallback"), out
