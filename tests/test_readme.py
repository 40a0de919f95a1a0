"""The README's Python examples run as written and say what they claim."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_examples_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks
    runnable = [b for b in blocks if "TorchTracer" in b]
    assert runnable, "the quick example is missing"
    for block in runnable:
        exec(compile(block, str(README), "exec"), {})  # noqa: S102 - our own documentation
    out = capsys.readouterr().out.split()
    assert out[0] == "True"  # the trace validates
    assert int(out[1]) >= 0
