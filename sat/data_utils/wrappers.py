"""Dataset wrappers that split, weight, shuffle and repeat other datasets without copying them.

Every random choice is a function of ``seed`` and the index, so every process (and every
restart) sees the same order, and no permutation of the whole corpus is stored.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

import numpy as np
from torch.utils.data import Dataset


class ConcatDataset(Dataset):
    """Datasets one after another; dataset ``i`` appears ``weights[i]`` times (integer weights,
    as ``--train-data-weights`` gives).
    ``**kwargs``: accepted for compatibility with the original, unused."""

    def __init__(self, datasets: Sequence[Dataset], weights: Sequence[int] | None = None, **kwargs):
        if not datasets:
            raise ValueError("ConcatDataset needs at least one dataset")
        weights = list(weights) if weights is not None else [1] * len(datasets)
        if len(weights) != len(datasets):
            raise ValueError(f"{len(weights)} weights for {len(datasets)} datasets")
        if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
            raise ValueError(f"dataset weights must be non-negative and not all zero, got {weights}")
        self.datasets = list(datasets)
        self.weights = weights
        self.cumulative_sizes = np.cumsum([len(d) * w for d, w in zip(self.datasets, weights)]).tolist()

    def __len__(self) -> int:
        return self.cumulative_sizes[-1]

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for ConcatDataset of length {len(self)}")
        which = bisect_right(self.cumulative_sizes, index)
        start = self.cumulative_sizes[which - 1] if which else 0
        dataset = self.datasets[which]
        return dataset[(index - start) % len(dataset)]


class RandomMappingDataset(Dataset):
    """``scale`` times longer than ``ds``; index ``i`` maps to a sample drawn from ``(seed, i)``.
    Random order with no stored permutation; training never runs out of data.
    ``**kwargs``: accepted for compatibility with the original, unused."""

    def __init__(self, ds: Dataset, scale: int = 200, seed: int = 1234, **kwargs):
        if len(ds) == 0:
            raise ValueError("RandomMappingDataset got an empty dataset")
        self.wrapped_data = ds
        self.scale = scale
        self.seed = seed

    def __len__(self) -> int:
        return len(self.wrapped_data) * self.scale

    def __getitem__(self, index: int):
        rng = np.random.default_rng((self.seed, index))
        return self.wrapped_data[int(rng.integers(len(self.wrapped_data)))]


class RandomDataset(Dataset):
    """``scale`` epochs of ``ds``, each in its own random order (a permutation per epoch from
    ``(seed, epoch)``): every sample exactly once per epoch.
    ``**kwargs``: accepted for compatibility with the original, unused."""

    def __init__(self, ds: Dataset, scale: int = 1, seed: int = 1234, **kwargs):
        if len(ds) == 0:
            raise ValueError("RandomDataset got an empty dataset")
        self.wrapped_data = ds
        self.scale = scale
        self.seed = seed
        self._epoch = -1
        self._order = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.wrapped_data) * self.scale

    def __getitem__(self, index: int):
        epoch, offset = divmod(index, len(self.wrapped_data))
        if epoch != self._epoch:  # one permutation in memory at a time
            self._order = np.random.default_rng((self.seed, epoch)).permutation(len(self.wrapped_data))
            self._epoch = epoch
        return self.wrapped_data[int(self._order[offset])]


class BlockedRandomSplitDataset(Dataset):
    """The part of ``ds`` at positions ``indices`` within every block of ``block_size``
    samples (and the final partial block). Splits built from disjoint ``indices`` never share a
    sample, and only one block's worth of indices is stored.
    ``**kwargs``: accepted for compatibility with the original, unused."""

    def __init__(self, ds: Dataset, indices: Sequence[int], block_size: int, **kwargs):
        self.indices = np.sort(np.asarray(indices, dtype=np.int64))
        if len(self.indices) and (self.indices[0] < 0 or self.indices[-1] >= block_size):
            raise ValueError(f"indices must lie within [0, block_size={block_size})")
        self.block_size = block_size
        self.wrapped_data = ds
        full_blocks, rest = divmod(len(ds), block_size)
        self.len = len(self.indices) * full_blocks + int(np.sum(self.indices < rest))

    def __len__(self) -> int:
        return self.len

    def __getitem__(self, index: int):
        if not 0 <= index < self.len:
            raise IndexError(f"index {index} out of range for a split of length {self.len}")
        block, position = divmod(index, len(self.indices))
        return self.wrapped_data[block * self.block_size + int(self.indices[position])]


def split_ds(
    ds: Dataset, split: Sequence[float], block_size: int = 10000, seed: int = 1234
) -> list[BlockedRandomSplitDataset | None]:
    """Split ``ds`` into parts with the proportions ``split`` (e.g. ``[0.98, 0.01, 0.01]``):
    each block of ``block_size`` samples is permuted with ``seed`` and cut in those proportions.
    A zero proportion gives ``None``; a positive one at least one sample per block."""
    if any(fraction < 0 for fraction in split) or sum(split) <= 0:
        raise ValueError(f"split proportions must be non-negative with a positive sum, got {list(split)}")
    block_size = min(block_size, len(ds))
    if block_size == 0:
        raise ValueError("cannot split an empty dataset")
    sizes = _part_sizes(split, block_size)
    permutation = np.random.default_rng(seed).permutation(block_size)
    parts: list[BlockedRandomSplitDataset | None] = []
    start = 0
    for size in sizes:
        parts.append(BlockedRandomSplitDataset(ds, permutation[start : start + size], block_size) if size else None)
        start += size
    return parts


def _part_sizes(split: Sequence[float], block_size: int) -> list[int]:
    """Whole sample counts per part of a block (largest remainders), at least 1 for every
    positive proportion, summing to at most ``block_size``."""
    positive = [i for i, fraction in enumerate(split) if fraction > 0]
    if len(positive) > block_size:
        raise ValueError(f"cannot split blocks of {block_size} samples into {len(positive)} non-empty parts")
    exact = [block_size * fraction / sum(split) for fraction in split]
    sizes = [int(x) for x in exact]
    by_remainder = sorted(positive, key=lambda i: exact[i] - sizes[i], reverse=True)
    for i in by_remainder[: block_size - sum(sizes)]:
        sizes[i] += 1
    for i in positive:
        if sizes[i] == 0:  # a tiny part still gets a sample, taken from the largest part
            sizes[max(positive, key=lambda j: sizes[j])] -= 1
            sizes[i] = 1
    return sizes
