"""Data: datasets read from files, wrappers that split, weight and shuffle them, the
distributed batch sampler and ``make_loaders``. ``load_hf_dataset`` needs ``datasets``
(imported only when called); the tar-shard datasets need ``webdataset``, imported on first use of
``SimpleDistributedWebDataset`` or ``MetaDistributedWebDataset``."""

import importlib

from sat.data_utils.configure_data import get_split, make_data_loader, make_dataset_full, make_loaders, should_split
from sat.data_utils.datasets import BinaryDataset, JsonlDataset, TSVDataset
from sat.data_utils.hf_dataset import load_hf_dataset, parse_huggingface_path
from sat.data_utils.iterable import AlterDataset, JsonlIterableDataset
from sat.data_utils.samplers import DistributedBatchSampler
from sat.data_utils.wrappers import (
    BlockedRandomSplitDataset,
    ConcatDataset,
    RandomDataset,
    RandomMappingDataset,
    split_ds,
)

# Names whose module imports a heavy package: resolved on first access.
_LAZY = {
    "MetaDistributedWebDataset": "sat.data_utils.webds",
    "SimpleDistributedWebDataset": "sat.data_utils.webds",
}

__all__ = [
    "AlterDataset",
    "BinaryDataset",
    "BlockedRandomSplitDataset",
    "ConcatDataset",
    "DistributedBatchSampler",
    "JsonlDataset",
    "JsonlIterableDataset",
    "MetaDistributedWebDataset",
    "RandomDataset",
    "RandomMappingDataset",
    "SimpleDistributedWebDataset",
    "TSVDataset",
    "get_split",
    "load_hf_dataset",
    "make_data_loader",
    "make_dataset_full",
    "make_loaders",
    "parse_huggingface_path",
    "should_split",
    "split_ds",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sat.data_utils' has no attribute {name!r}")
