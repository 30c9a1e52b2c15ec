"""The Python examples in the model and tokenizer pages run as written."""

from __future__ import annotations

import glob
import os
import re

import pytest

import sat.tokenization

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
PAGES = sorted(glob.glob(os.path.join(DOCS, "models", "*.md"))) + [os.path.join(DOCS, "tokenizers.md")]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: os.path.relpath(page, DOCS))
def test_page_examples_run(page, tmp_path, monkeypatch):
    with open(page, encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.DOTALL)
    assert blocks, f"{page} has no Python example"
    monkeypatch.chdir(tmp_path)  # the examples write files
    for number, block in enumerate(blocks):  # in this process: transformers is imported once
        exec(compile(block, f"{page} (example {number + 1})", "exec"), {"__name__": "__main__"})
    sat.tokenization._current.clear()
