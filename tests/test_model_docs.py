"""The examples in docs/models/*.md run: each page's ```python blocks, in order, in one namespace
(a block fenced ```python no-run is shown but not run)."""

from __future__ import annotations

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = sorted(glob.glob(os.path.join(ROOT, "docs", "models", "*.md")))
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


@pytest.mark.parametrize("page", PAGES, ids=[os.path.basename(page) for page in PAGES])
def test_page_examples_run(page, tmp_path, monkeypatch):
    with open(page, encoding="utf-8") as f:
        blocks = BLOCK.findall(f.read())
    assert blocks, f"{page} has no runnable example"
    monkeypatch.chdir(tmp_path)  # examples write into the current directory
    namespace: dict = {"__name__": "__docs__"}
    for number, block in enumerate(blocks):
        exec(compile(block, f"{os.path.basename(page)}[block {number}]", "exec"), namespace)
