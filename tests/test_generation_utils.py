"""sat.generation.utils: timestamped names, the prompt loop and image grids."""

from __future__ import annotations

import os
import re

import torch
from PIL import Image

from sat.generation.utils import generate_continually, make_grid, save_multiple_images, timed_name


def test_timed_name():
    name = timed_name("sample", ".txt", "out")
    assert re.fullmatch(r"out/sample-\d\d-\d\d-\d\d-\d\d-\d\d\.txt", name)
    assert re.fullmatch(r"sample-[\d-]+", timed_name("sample"))


def test_interactive_loop_until_stop(monkeypatch, capsys):
    answers = iter(["  first ", "", "bad", "second", "stop", "never"])
    monkeypatch.setattr("builtins.input", lambda prompt: next(answers))
    seen = []

    def func(query):
        if query == "bad":
            raise ValueError("bad query")
        seen.append(query)

    generate_continually(func)
    assert seen == ["first", "second"]
    out = capsys.readouterr().out
    assert "Query should not be empty!" in out and "bad query" in out


def test_queries_from_a_file(tmp_path):
    source = tmp_path / "prompts.txt"
    source.write_text("one\n\n two \n", encoding="utf-8")
    seen = []
    generate_continually(seen.append, str(source))
    assert seen == ["one", "two"]


def test_save_multiple_images(tmp_path):
    batches = [torch.rand(2, 3, 8, 8), torch.rand(1, 3, 8, 8) * 5]
    grid = tmp_path / "grid.png"
    save_multiple_images(batches, str(grid))
    assert Image.open(grid).size == (3 * 10 + 2, 10 + 2)  # 3 images of 8 px with 2 px padding
    save_multiple_images(batches, str(tmp_path), debug=False)
    assert Image.open(tmp_path / "0.jpg").size == (2 * 10 + 2, 12)
    assert Image.open(tmp_path / "concat.jpg").size == (32, 12)
    assert os.stat(tmp_path / "1.jpg").st_mode & 0o777 == 0o777


def test_grid_is_normalised():
    image = torch.tensor([[[[-1.0, 1.0]]]])  # [1, 1, 1, 2]: grey scale, min and max
    grid = make_grid(image, padding=0)
    assert grid.shape == (3, 1, 2)
    assert grid[:, 0, 0].tolist() == [0.0] * 3 and grid[:, 0, 1].tolist() == [1.0] * 3
