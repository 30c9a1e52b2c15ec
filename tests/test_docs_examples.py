"""The Python examples in the documentation run as written: each page's ```python blocks, in
order, in one namespace (a block fenced ```python no-run is shown but not run)."""

from __future__ import annotations

import glob
import os
import re

import pytest

import sat.tokenization

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
PAGES = sorted(
    glob.glob(os.path.join(DOCS, "models", "*.md"))
    + glob.glob(os.path.join(DOCS, "finetune", "*.md"))
    + [os.path.join(DOCS, "tokenizers.md")]
)
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: os.path.relpath(page, DOCS))
def test_page_examples_run(page, tmp_path, monkeypatch):
    with open(page, encoding="utf-8") as f:
        blocks = BLOCK.findall(f.read())
    assert blocks, f"{page} has no runnable Python example"
    monkeypatch.chdir(tmp_path)  # the examples write files
    namespace: dict = {"__name__": "__main__"}
    for number, block in enumerate(blocks):  # in this process: transformers is imported once
        exec(compile(block, f"{page} (example {number + 1})", "exec"), namespace)
    sat.tokenization._current.clear()
