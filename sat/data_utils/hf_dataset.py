"""``load_hf_dataset``: a HuggingFace ``datasets`` dataset, from local files or the Hub, mapped
through ``process_fn`` and returned as torch tensors. Needs ``pip install datasets``."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable

from sat.helpers import print_rank0

# File extension -> the datasets builder that reads it.
_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".txt": "text"}


def parse_huggingface_path(path: str) -> tuple[str, str | None, str]:
    """``hf://name/subset/split`` (or without ``hf://``) -> ``(name, subset or None, split)``;
    ``*`` as the subset means none, and the split defaults to ``train``."""
    names = path.removeprefix("hf://").split("/")
    subset = names[1] if len(names) >= 2 and names[1] != "*" else None
    split = names[2] if len(names) >= 3 else "train"
    return names[0], subset, split


def saved_copy_path(path: str, cache_dir: str, transformer_name: str) -> str:
    """Where ``load_hf_dataset`` keeps the mapped copy of ``path``, keyed by the whole path:
    ``<name>_<subset>_<split>_<transformer_name>.data`` for a Hub name (the original's file name),
    and for a local file or folder its name plus a hash of its absolute path, so two
    ``.../validation`` sources never share one copy."""
    local = path.removeprefix("hf://")
    if os.path.exists(local):
        absolute = os.path.abspath(local)
        digest = hashlib.sha1(absolute.encode()).hexdigest()[:12]
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(absolute.rstrip(os.sep)))
        return os.path.join(cache_dir, f"{stem}-{digest}_{transformer_name}.data")
    name, subset, split = parse_huggingface_path(path)
    return os.path.join(cache_dir, f"{name}_{subset}_{split}_{transformer_name}.data")


def _load(path: str, cache_dir: str | None):
    import datasets

    local = path.removeprefix("hf://")
    if os.path.isfile(local):
        extension = os.path.splitext(local)[1].lower()
        if extension not in _BUILDERS:
            raise ValueError(f"cannot tell how to read {local}: expected one of {sorted(_BUILDERS)}")
        kwargs = {"delimiter": "\t"} if extension == ".tsv" else {}
        return datasets.load_dataset(
            _BUILDERS[extension], data_files=local, split="train", cache_dir=cache_dir, **kwargs
        )
    if os.path.isdir(local):
        if os.path.isfile(os.path.join(local, "dataset_info.json")):  # written by save_to_disk
            return datasets.load_from_disk(local)
        return datasets.load_dataset(local, split="train", cache_dir=cache_dir)
    name, subset, split = parse_huggingface_path(path)
    return datasets.load_dataset(name, subset, split=split, cache_dir=cache_dir)


def load_hf_dataset(
    path: str,
    process_fn: Callable[[dict], dict],
    columns: list[str] | None = None,
    cache_dir: str | None = None,
    offline: bool = False,
    transformer_name: str | None = None,
    rebuild: bool = False,
):
    """Load ``path`` and map every record through ``process_fn``.

    Args:
        path: a local ``.json``/``.jsonl``/``.csv``/``.tsv``/``.parquet``/``.txt`` file, a folder
            (of such files, or written by ``save_to_disk``), or a Hub name ``hf://name/subset/split``.
        process_fn: record (a dict of columns) -> dict of new or replaced columns.
        columns: the columns to return as torch tensors (default: all).
        cache_dir: where ``datasets`` caches downloads and mapped results.
        offline: never reach the Hub (also set by ``HF_DATASETS_OFFLINE=1``).
        transformer_name: with ``cache_dir``, keep the mapped dataset in the folder
            ``saved_copy_path(path, cache_dir, transformer_name)`` and reuse it next time.
        rebuild: map again even when that saved copy exists (after changing ``process_fn``).
    """
    try:
        import datasets
    except ImportError:
        raise ImportError("load_hf_dataset needs the `datasets` package: pip install datasets") from None
    if offline:
        datasets.config.HF_HUB_OFFLINE = True
    saved = saved_copy_path(path, cache_dir, transformer_name) if transformer_name and cache_dir else None
    if saved and os.path.isdir(saved) and not rebuild:
        dataset = datasets.load_from_disk(saved)
    else:
        dataset = _load(path, cache_dir).map(process_fn)
        if saved:
            print_rank0(f"saving the mapped dataset to {saved}; pass rebuild=True after changing process_fn")
            dataset.save_to_disk(saved)
    dataset.set_format(type="torch", columns=columns)
    return dataset
