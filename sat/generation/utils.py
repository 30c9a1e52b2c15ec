"""Helpers of the original's inference scripts: timestamped output names, a prompt loop and
image grids.

``generate_continually`` runs without ``torch.distributed`` too (one process reads the prompts);
with a process group, rank 0 reads interactive prompts and broadcasts them, and a prompt file is
shared out over the data-parallel ranks line by line.
"""

from __future__ import annotations

import math
import os
import stat
import time
from collections.abc import Callable, Sequence
from datetime import datetime

import torch
import torch.distributed as dist

from sat.mpu import get_data_parallel_rank, get_data_parallel_world_size, get_model_parallel_rank
from sat.runtime import global_rank

STOP_WORD = "stop"
# Everyone may read and write the images (the original's chmod 777): results are shared.
_SHARED_MODE = stat.S_IRWXU | stat.S_IRWXG | stat.S_IRWXO


def timed_name(prefix: str, suffix: str | None = None, path: str | None = None) -> str:
    """``path/prefix-MM-DD-HH-MM-SS<suffix>``: a file name stamped with the current time."""
    name = f"{prefix}-{datetime.now().strftime('%m-%d-%H-%M-%S')}{suffix or ''}"
    return name if path is None else os.path.join(path, name)


def make_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2) -> torch.Tensor:
    """``[n, c, h, w]`` -> one ``[c, H, W]`` image, ``nrow`` images a row, min-max scaled to [0, 1]
    (torchvision's ``make_grid(normalize=True)``, with the grid's zero padding)."""
    if images.dim() == 3:
        images = images.unsqueeze(0)
    images = images.detach().float().cpu()
    low, high = images.min(), images.max()
    images = (images - low) / (high - low).clamp(min=1e-5)
    n, c, h, w = images.shape
    if c == 1:
        images, c = images.expand(n, 3, h, w), 3
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    grid = images.new_zeros(c, rows * (h + padding) + padding, cols * (w + padding) + padding)
    for index in range(n):
        top, left = (index // cols) * (h + padding) + padding, (index % cols) * (w + padding) + padding
        grid[:, top : top + h, left : left + w] = images[index]
    return grid


def save_image(images: torch.Tensor, path: str) -> None:
    """Save ``[n, c, h, w]`` (or ``[c, h, w]``) as one normalised grid image with PIL."""
    try:
        from PIL import Image
    except ImportError as error:  # pillow is an optional dependency
        raise ImportError("saving images needs pillow: pip install pillow") from error
    pixels = (make_grid(images) * 255).add_(0.5).clamp_(0, 255).to(torch.uint8)  # [c, H, W]
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(path)


def save_multiple_images(imgs: Sequence[torch.Tensor], path: str, debug: bool = True) -> None:
    """Save a list of ``[n, c, h, w]`` image batches: with ``debug``, one grid at the file
    ``path``; otherwise ``path/<i>.jpg`` for each batch and ``path/concat.jpg`` for all."""
    print("\nSave to: ", path, flush=True)
    if debug:
        save_image(torch.cat(list(imgs), dim=0), path)
        return
    targets = [(img, os.path.join(path, f"{i}.jpg")) for i, img in enumerate(imgs)]
    targets.append((torch.cat(list(imgs), dim=0), os.path.join(path, "concat.jpg")))
    for img, target in targets:
        save_image(img, target)
        os.chmod(target, _SHARED_MODE)


def _read_prompt() -> tuple[str, bool]:
    """Ask until the query is not empty; ``(query, stop)``."""
    while True:
        raw_text = input("\nPlease Input Query (stop to exit) >>> ").strip()
        if raw_text:
            return raw_text, raw_text == STOP_WORD
        print("Query should not be empty!")


def _interactive(func: Callable[[str], object]) -> None:
    distributed = dist.is_available() and dist.is_initialized()
    while True:
        info = list(_read_prompt()) if global_rank() == 0 else ["", False]
        if distributed:
            dist.broadcast_object_list(info)
        raw_text, is_stop = info
        if is_stop:
            return
        try:
            start_time = time.time()
            func(raw_text)
            if global_rank() == 0:
                print(f"\nTaken time {time.time() - start_time:.2f}\n", flush=True)
        except (ValueError, FileNotFoundError) as error:  # a bad query: report it, ask again
            print(error)


def _from_file(func: Callable[[str], object], input_source: str) -> None:
    with open(input_source, encoding="utf-8") as fin:
        lines = fin.readlines()
    for line_no, raw_text in enumerate(lines):
        if line_no % get_data_parallel_world_size() != get_data_parallel_rank():
            continue  # another data-parallel rank's line
        if get_model_parallel_rank() == 0:
            print(f"Working on No. {line_no} on model group {global_rank()}... ")
        raw_text = raw_text.strip()
        if not raw_text:
            continue
        start_time = time.time()
        func(raw_text)
        if get_model_parallel_rank() == 0:
            print(f"\nTaken time {time.time() - start_time:.2f}\n", flush=True)


def generate_continually(func: Callable[[str], object], input_source: str = "interactive") -> None:
    """Call ``func(query)`` for each query: typed at a prompt (``'interactive'``, until
    ``stop``; a ``ValueError`` or ``FileNotFoundError`` from ``func`` is printed and the loop
    goes on) or read from the file ``input_source``, one per non-empty line."""
    if input_source == "interactive":
        _interactive(func)
    else:
        _from_file(func, input_source)
