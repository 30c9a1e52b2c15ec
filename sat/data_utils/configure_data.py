"""``make_loaders``: the train, validation and test DataLoaders of a run, from ``args``.

Map-style data: ``create_dataset_function(path, args)`` is called once per path. With
``--split`` each dataset is split first (``split_ds``) and the parts are then concatenated
with ``--train-data-weights``, so the splits never overlap. Training data is then wrapped in a
``RandomMappingDataset`` (random order, never runs out) or, with ``--epochs``, a
``RandomDataset`` (each sample once per epoch). Evaluation data is random-mapped too, except
with ``--strict-eval``, which reads every sample exactly once.

Batches: the global batch is ``batch_size x data-parallel world``; ``DistributedBatchSampler``
gives each data-parallel rank its slice. Everything depends only on ``--seed`` and the
data-parallel rank.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, SequentialSampler

from sat import mpu
from sat.data_utils.iterable import AlterDataset
from sat.data_utils.samplers import DistributedBatchSampler
from sat.data_utils.wrappers import ConcatDataset, RandomDataset, RandomMappingDataset, split_ds
from sat.helpers import print_rank0

# Random-mapped datasets are at least this many times their source (the original's choice).
_MIN_SCALE = 200


def get_split(args) -> list[float]:
    """``--split`` ("949,50,1", "0.8/0.2" or "1") as three proportions summing to 1; the
    validation (test) share is 0 when ``--valid-data`` (``--test-data``) is given."""
    text = str(args.split)
    try:
        splits = [float(s) for s in text.replace("/", ",").split(",")]
    except ValueError:
        raise ValueError(f"--split must be numbers separated by ',' or '/', got {text!r}") from None
    if any(s < 0 for s in splits):
        raise ValueError(f"--split proportions must be non-negative, got {text!r}")
    if sum(splits) < 1.0:
        splits.append(1.0 - sum(splits))
    splits = (splits + [0.0, 0.0])[:3]
    if getattr(args, "valid_data", None):
        splits[1] = 0.0
    if getattr(args, "test_data", None):
        splits[2] = 0.0
    total = sum(splits)
    if total <= 0:
        raise ValueError(f"--split {text!r} leaves nothing to train or evaluate on")
    return [s / total for s in splits]


def should_split(split: Sequence[float]) -> bool:
    """Whether ``split`` gives data to more than one part."""
    return max(split) / sum(split) != 1.0


def _scale(needed_samples: int, length: int) -> int:
    if length == 0:
        raise ValueError("a dataset part has no samples: a smaller --split share or more data is needed")
    return max(_MIN_SCALE, math.ceil(needed_samples / length))


def _create(create_dataset_function: Callable, path: str, args) -> Dataset:
    """``create_dataset_function(path, args)``, refusing an empty map-style dataset by name."""
    ds = create_dataset_function(path, args)
    if not isinstance(ds, IterableDataset) and len(ds) == 0:
        raise ValueError(
            f"create_dataset_function returned an empty dataset for {path!r}: nothing to train or evaluate on"
        )
    return ds


def _train_samples_needed(args) -> int:
    world = mpu.get_data_parallel_world_size()
    return (args.train_iters or 0) * args.batch_size * getattr(args, "gradient_accumulation_steps", 1) * world


def _eval_samples_needed(args) -> int:
    world = mpu.get_data_parallel_world_size()
    interval = getattr(args, "eval_interval", None)
    evaluations = 1 + ((args.train_iters or 0) // interval if interval else 0)
    eval_batch = getattr(args, "eval_batch_size", None) or args.batch_size
    return evaluations * getattr(args, "eval_iters", 100) * eval_batch * world


def _train_wrapper(ds: Dataset, args) -> Dataset:
    if getattr(args, "epochs", None):
        return RandomDataset(ds, scale=args.epochs, seed=args.seed)
    return RandomMappingDataset(ds, scale=_scale(_train_samples_needed(args), len(ds)), seed=args.seed)


def _eval_wrapper(ds: Dataset, args) -> Dataset:
    if getattr(args, "strict_eval", False):
        return ds
    return RandomMappingDataset(ds, scale=_scale(_eval_samples_needed(args), len(ds)), seed=args.seed)


def _iterable_dataset(paths: Sequence[str], args, create_dataset_function: Callable, weights) -> IterableDataset:
    parts = []
    for path in paths:
        ds = create_dataset_function(path, args)
        if not isinstance(ds, IterableDataset):
            raise TypeError(
                f"with --iterable-dataset, create_dataset_function must return a torch IterableDataset; "
                f"for {path!r} it returned {type(ds).__name__}"
            )
        parts.append(ds)
    if len(parts) == 1:
        return parts[0]
    if getattr(args, "batch_from_same_dataset", False) and args.num_workers > 1:
        raise ValueError("--batch-from-same-dataset needs --num-workers 0 or 1 (workers would interleave sources)")
    return AlterDataset(
        parts,
        weights=weights,
        seed=args.seed,
        batch_from_same_dataset=getattr(args, "batch_from_same_dataset", False),
        batch_size=args.batch_size,
    )


def make_dataset_full(
    path: Sequence[str],
    split: Sequence[float] | None,
    args,
    create_dataset_function: Callable,
    dataset_weights: Sequence[int] | None = None,
    random_mapping: bool = True,
    is_train_data: bool = False,
    **kwargs,
):
    """The dataset(s) for ``path``: one dataset, or ``(train, valid, test)`` when ``split``
    divides it (a part with no share is ``None``).
    ``**kwargs``: accepted for compatibility with the original, unused."""
    iterable = args.iterable_dataset if is_train_data else getattr(args, "iterable_dataset_eval", False)
    if iterable:
        if split is not None and should_split(split):
            raise ValueError("iterable datasets cannot be split: give --valid-data/--test-data and --split 1")
        return _iterable_dataset(path, args, create_dataset_function, dataset_weights)
    if split is None or not should_split(split):
        ds = ConcatDataset([_create(create_dataset_function, p, args) for p in path], weights=dataset_weights)
        if not random_mapping:
            return ds
        return _train_wrapper(ds, args) if is_train_data else _eval_wrapper(ds, args)

    # Split each dataset first, then weight and concatenate: the parts never overlap.
    parts: list[list[Dataset]] = [[], [], []]
    for p in path:
        for i, part in enumerate(
            split_ds(_create(create_dataset_function, p, args), split, args.block_size, args.seed)
        ):
            if part is not None:
                parts[i].append(part)
    train, valid, test = (ConcatDataset(p, weights=dataset_weights) if p else None for p in parts)
    if train is not None:
        train = _train_wrapper(train, args)
    valid = _eval_wrapper(valid, args) if valid is not None else None
    test = _eval_wrapper(test, args) if test is not None else None
    return train, valid, test


def make_data_loader(
    dataset: Dataset, batch_size: int, args, split: str, collate_fn: Callable | None = None
) -> DataLoader:
    """A DataLoader giving this data-parallel rank its slice of global batches of
    ``batch_size``. For ``val``/``test`` it records ``args.<split>_last_shape`` (real samples
    per rank in the last batch) and ``args.<split>_drop_number`` (ranks with none)."""
    world = mpu.get_data_parallel_world_size()
    workers = getattr(args, "num_workers", 0)
    loader_kwargs = dict(
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        collate_fn=collate_fn,
        prefetch_factor=getattr(args, "prefetch_factor", None) if workers > 0 else None,
    )
    prefix = {"val": "val", "test": "test"}.get(split)
    if isinstance(dataset, IterableDataset):
        if prefix and getattr(args, "strict_eval", False):
            raise ValueError("--strict-eval needs map-style evaluation data: an iterable dataset has no known end")
        if prefix:
            setattr(args, f"{prefix}_last_shape", [batch_size // world] * world)
            setattr(args, f"{prefix}_drop_number", 0)
        per_rank = None if getattr(args, "iterable_dataset", False) == "custom" else batch_size // world
        return DataLoader(dataset, batch_size=per_rank, **loader_kwargs)

    sampler = DistributedBatchSampler(
        SequentialSampler(dataset),
        batch_size,
        drop_last=split == "train",
        rank=mpu.get_data_parallel_rank(),
        world_size=world,
    )
    if prefix:
        last_shape = sampler.last_shape
        setattr(args, f"{prefix}_last_shape", last_shape)
        setattr(args, f"{prefix}_drop_number", last_shape.count(0))
    return DataLoader(dataset, batch_sampler=sampler, **loader_kwargs)


def make_loaders(args, create_dataset_function: Callable, collate_fn: Callable | None = None):
    """``(train, valid, test)`` DataLoaders (``None`` where there is no data); sets
    ``args.do_train``, ``args.do_valid`` and ``args.do_test``."""
    world = mpu.get_data_parallel_world_size()
    batch_size = args.batch_size * world
    eval_batch_size = (getattr(args, "eval_batch_size", None) or args.batch_size) * world
    split = get_split(args)
    if args.train_data_weights is not None and len(args.train_data_weights) != len(args.train_data or []):
        raise ValueError(f"--train-data-weights {args.train_data_weights} needs one weight per --train-data entry")

    train = valid = test = None
    if args.train_data:
        made = make_dataset_full(
            args.train_data,
            split,
            args,
            create_dataset_function,
            dataset_weights=args.train_data_weights,
            is_train_data=True,
        )
        if isinstance(made, tuple):
            train, valid, test = made
        else:
            train = made
    if valid is None and getattr(args, "valid_data", None):
        valid = make_dataset_full(args.valid_data, None, args, create_dataset_function)
    if test is None and getattr(args, "test_data", None):
        test = make_dataset_full(args.test_data, None, args, create_dataset_function)
    print_rank0(
        "datasets: "
        + ", ".join(f"{name} {_describe(ds)}" for name, ds in (("train", train), ("valid", valid), ("test", test))),
        level="DEBUG",
    )

    args.do_train = train is not None and args.batch_size > 0
    args.do_valid = valid is not None
    args.do_test = test is not None
    train = make_data_loader(train, batch_size, args, "train", collate_fn) if args.do_train else None
    valid = make_data_loader(valid, eval_batch_size, args, "val", collate_fn) if valid is not None else None
    test = make_data_loader(test, eval_batch_size, args, "test", collate_fn) if test is not None else None
    return train, valid, test


def _describe(ds) -> str:
    if ds is None:
        return "none"
    if isinstance(ds, IterableDataset):
        return f"{type(ds).__name__} (iterable)"
    return f"{type(ds).__name__} of {len(ds)}"
