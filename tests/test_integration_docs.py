"""Each integration page's example runs as written and prints a valid trace."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is imported: no TensorFlow here

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = {"lightning.md": "lightning", "huggingface.md": "transformers", "jax.md": "flax", "keras.md": "keras"}

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("page", sorted(PAGES))
def test_integration_page_example_runs(page, capsys):
    pytest.importorskip(PAGES[page])
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)
    assert len(blocks) == 1, page
    exec(compile(blocks[0], str(DOCS / page), "exec"), {"__name__": "__doc_example__"})  # noqa: S102 - our own documentation
    out = capsys.readouterr().out.strip().splitlines()
    assert out and out[-1].startswith("True "), out
