"""Build of the native statistics kernel (everything else is declared in pyproject.toml).

The extension is optional: where no C compiler is available the install still succeeds
and tracefmt uses its pure-numpy statistics (same results, slower; `tracefmt info` says
so). The kernel must be compiled without value-changing floating-point optimisations:
its sums are defined to be bit-identical to the numpy fallback's.
"""

import sys

from setuptools import Extension, setup

_FLAGS = [] if sys.platform == "win32" else ["-O3", "-fno-wrapv", "-ffp-contract=off", "-fno-fast-math", "-std=c99"]
_FLAGS_MSVC = ["/O2", "/fp:precise"] if sys.platform == "win32" else []

setup(ext_modules=[Extension("tracefmt._stats", ["tracefmt/_stats.c"], extra_compile_args=_FLAGS or _FLAGS_MSVC, optional=True)])
