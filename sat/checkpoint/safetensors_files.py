"""Safetensors files: written tensor by tensor, split into shards past a size, read back
memory-mapped and lazily.

One set of tensors is stored under a *stem* in a directory, as ``transformers`` does::

    <stem>.safetensors                              when it fits in one shard
    <stem>-00001-of-00003.safetensors ...           otherwise, with
    <stem>.safetensors.index.json                   {"metadata": {"total_size": bytes},
                                                     "weight_map": {key: shard file name}}

Keys that name the very same tensor (tied weights: same storage, offset, shape and strides) can
be stored once: the file's ``__metadata__["sat_aliases"]`` (JSON ``{alias: key}``) records the
others, and reading gives both keys one tensor again. Without that (files for another library)
every key is written with its own bytes.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Iterator, Mapping

import torch

from sat.checkpoint.atomic import atomic_write
from sat.checkpoint.errors import CheckpointError
from sat.helpers import progress

ALIASES = "sat_aliases"
_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint64: "U64",
    torch.uint32: "U32",
    torch.uint16: "U16",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}
_SIZE = re.compile(r"(\d+)\s*(?:([KMGT]i?)([Bb]))?", re.IGNORECASE)


def parse_size(size: int | str) -> int:
    """Bytes in ``size``, read as ``transformers`` reads ``max_shard_size``: an int is bytes; a
    string is digits with an optional unit, ``KB``/``MB``/``GB``/``TB`` (powers of 1000) or
    ``KiB``/``MiB``/``GiB``/``TiB`` (powers of 1024); a lower-case ``b`` means bits (``"5Gb"``)."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        match = _SIZE.fullmatch(str(size).strip())
        if match is None:
            raise ValueError(
                f"cannot read max_shard_size {size!r} as a size: use bytes (an int) or a number with a unit, "
                "e.g. '500MB', '2GiB', '5GB'"
            )
        digits, unit, b = match.groups()
        value = int(digits) * _UNITS[(unit or "").upper()]
        if b == "b" and unit and not unit.lower().endswith("i"):
            value //= 8  # bits, as transformers reads "5Gb"
    if value <= 0:
        raise ValueError(f"max_shard_size must be positive, got {size!r}")
    return value


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _identity(tensor: torch.Tensor) -> tuple:
    """What makes two tensors the same tensor in memory (not merely overlapping storage)."""
    storage = tensor.untyped_storage().data_ptr()
    return storage, tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype


def write_safetensors(path: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Write ``tensors`` as one safetensors file at ``path`` (atomically), one tensor at a time:
    the extra memory is one tensor's contiguous copy at most, whatever the file's size."""
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    offset = 0
    for key, tensor in tensors.items():
        if tensor.is_meta:
            raise ValueError(f"cannot save {key}: it is on the meta device (never loaded)")
        if tensor.dtype not in _DTYPES:
            raise ValueError(f"cannot save {key}: safetensors has no dtype {tensor.dtype}")
        end = offset + _nbytes(tensor)
        header[key] = {"dtype": _DTYPES[tensor.dtype], "shape": list(tensor.shape), "data_offsets": [offset, end]}
        offset = end
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as the format asks

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(encoded)))
            f.write(encoded)
            for tensor in tensors.values():
                flat = tensor.detach().to("cpu").contiguous().reshape(-1)  # a copy only if not already so
                f.write(flat.view(torch.uint8).numpy().data)

    atomic_write(path, write)


def single_name(stem: str) -> str:
    return f"{stem}.safetensors"


def index_name(stem: str) -> str:
    return f"{stem}.safetensors.index.json"


def shard_name(stem: str, number: int, count: int) -> str:
    """The name of shard ``number`` (1-based) of ``count``."""
    return f"{stem}-{number:05d}-of-{count:05d}.safetensors"


def _shard_pattern(stem: str) -> re.Pattern:
    return re.compile(re.escape(stem) + r"-\d{5}-of-\d{5}\.safetensors")


def _deduplicate(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors to store, and ``{alias: key}`` for keys naming the same tensor as an earlier key."""
    unique: dict[str, torch.Tensor] = {}
    alias_of: dict[str, str] = {}
    first_key: dict[tuple, str] = {}
    for key, tensor in state.items():
        identity = _identity(tensor) if tensor.numel() and not tensor.is_meta else None
        if identity is not None and identity in first_key:
            alias_of[key] = first_key[identity]
            continue
        if identity is not None:
            first_key[identity] = key
        unique[key] = tensor
    return unique, alias_of


def _plan(tensors: Mapping[str, torch.Tensor], max_bytes: int) -> list[list[str]]:
    """Keys in order, cut into shards of at most ``max_bytes`` (a larger tensor gets one alone)."""
    shards: list[list[str]] = [[]]
    used = 0
    for key, tensor in tensors.items():
        size = _nbytes(tensor)
        if shards[-1] and used + size > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(key)
        used += size
    return shards


def save_safetensors(
    state: Mapping[str, torch.Tensor],
    directory: str,
    stem: str,
    max_shard_size: int | str = "5GB",
    metadata: Mapping[str, str] | None = None,
    keep_aliases: bool = True,
) -> list[str]:
    """Write ``state`` under ``stem`` in ``directory`` (see the module docstring): the shards
    first, the index last, each atomically, so an index names only complete shards. Files a
    previous save left under ``stem`` are removed. Returns the names written.

    ``keep_aliases``: store tied tensors once and record their other keys (sat checkpoints);
    False writes every key's bytes (for readers that know no aliases, e.g. ``transformers``).
    """
    unique, alias_of = _deduplicate(state) if keep_aliases else (dict(state), {})
    shards = _plan(unique, parse_size(max_shard_size))
    names = (
        [single_name(stem)] if len(shards) == 1 else [shard_name(stem, i + 1, len(shards)) for i in range(len(shards))]
    )
    weight_map: dict[str, str] = {}
    for name, keys in progress(list(zip(names, shards)), desc=f"saving {stem}", unit="shard"):
        members = set(keys)
        aliases = {alias: key for alias, key in alias_of.items() if key in members}
        extra = {ALIASES: json.dumps(aliases)} if aliases else {}
        write_safetensors(
            os.path.join(directory, name), {key: unique[key] for key in keys}, {**(metadata or {}), **extra}
        )
        weight_map.update(dict.fromkeys([*keys, *aliases], name))
    if len(names) > 1:
        index = {
            "metadata": {"total_size": sum(map(_nbytes, unique.values()))},
            "weight_map": dict(sorted(weight_map.items())),
        }
        atomic_write(os.path.join(directory, index_name(stem)), lambda tmp: _write_json(tmp, index))
    _remove_stale(directory, stem, keep=[*names, index_name(stem)] if len(names) > 1 else names)
    return names


def _write_json(path: str, value: object) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)


def safetensors_files(directory: str, stem: str) -> list[str]:
    """The files under ``stem`` in ``directory`` (single file, shards and index), sorted."""
    if not os.path.isdir(directory):
        return []
    pattern = _shard_pattern(stem)
    own = {single_name(stem), index_name(stem)}
    return sorted(name for name in os.listdir(directory) if name in own or pattern.fullmatch(name))


def _remove_stale(directory: str, stem: str, keep: list[str]) -> None:
    for name in safetensors_files(directory, stem):
        if name not in keep:
            os.remove(os.path.join(directory, name))


def entry_file(directory: str, stem: str) -> str:
    """The file that stands for the tensors under ``stem``: the index when sharded, else the
    single file."""
    index = os.path.join(directory, index_name(stem))
    return index if os.path.isfile(index) else os.path.join(directory, single_name(stem))


def has_safetensors(directory: str, stem: str) -> bool:
    """Whether ``directory`` holds tensors under ``stem`` (one file or an index)."""
    return any(os.path.isfile(os.path.join(directory, n)) for n in (single_name(stem), index_name(stem)))


def _open(path: str):
    from safetensors import SafetensorError, safe_open

    if not os.path.isfile(path):
        raise CheckpointError(f"missing safetensors file {path}")
    try:
        return safe_open(path, framework="pt")
    except SafetensorError as e:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from e


def read_weight_map(path: str) -> dict[str, str]:
    """The ``weight_map`` (key to shard file name) of the index file at ``path``."""
    try:
        with open(path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError("weight_map must map each key to a file name")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is not a valid safetensors index ({type(e).__name__}: {e})") from e
    return weight_map


def _aliases(handle, path: str) -> dict[str, str]:
    """The ``{alias: stored key}`` a file's metadata records (``{}`` for files of other writers)."""
    text = (handle.metadata() or {}).get(ALIASES, "{}")
    try:
        aliases = json.loads(text)
    except ValueError as e:
        raise CheckpointError(f"{path} has unreadable {ALIASES} metadata ({e}): {text[:80]!r}") from e
    if not isinstance(aliases, dict) or not all(isinstance(target, str) for target in aliases.values()):
        raise CheckpointError(f"{path}: {ALIASES} metadata must map keys to stored keys, found {text[:80]!r}")
    missing = sorted(set(aliases.values()) - set(handle.keys()))
    if missing:
        raise CheckpointError(f"{path}: {ALIASES} names keys the file does not hold: {missing[:5]}")
    return aliases


_TORCH_DTYPES = {name: dtype for dtype, name in _DTYPES.items()}


class _MappedFile:
    """A safetensors file as one memory-mapped storage, its tensors views of it that touch no
    data. ``safe_open``'s ``get_tensor`` reads the first page of every tensor it returns, and on a
    file not in the page cache each such read pulls in the kernel's read-around window (8 MiB
    here): opening a 1.5 GiB checkpoint read 1.2 GiB from disk before a weight was used."""

    def __init__(self, path: str):
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            self._entries = json.loads(f.read(length))  # safe_open validated the header already
        self._data = 8 + length
        self._storage = torch.UntypedStorage.from_file(path, shared=False, nbytes=os.path.getsize(path))

    def tensor(self, key: str) -> torch.Tensor | None:
        """The tensor ``key`` as a view of the mapping; None where it cannot be one (a dtype this
        module does not name, or data not aligned to its element size)."""
        entry = self._entries[key]
        dtype = _TORCH_DTYPES.get(entry["dtype"])
        begin = self._data + entry["data_offsets"][0]
        if dtype is None or begin % dtype.itemsize:
            return None
        view = torch.empty(0, dtype=dtype)
        return view.set_(self._storage, begin // dtype.itemsize, tuple(entry["shape"]))


class SafetensorsState(Mapping[str, torch.Tensor]):
    """The tensors stored under ``stem`` in ``directory`` (one file or the shards an index names),
    as a read-only mapping. Every file's header is checked when it is opened; a tensor is a view
    of its memory-mapped file, read from disk only where it is used, so a model loads shard by
    shard with no copy of the file in memory. Aliased keys give the same tensor object.
    """

    def __init__(self, directory: str, stem: str):
        index = os.path.join(directory, index_name(stem))
        if os.path.isfile(index):
            weight_map = read_weight_map(index)
            files = sorted(set(weight_map.values()))
        else:
            weight_map, files = None, [single_name(stem)]
        self._handles = {}
        self._mapped: dict[str, _MappedFile] = {}
        self._where: dict[str, tuple[str, str]] = {}
        self._aliased: dict[str, torch.Tensor] = {}
        self._alias_targets: set[str] = set()
        for name in files:
            path = os.path.join(directory, name)
            if weight_map is not None and not os.path.isfile(path):
                raise CheckpointError(f"{index} names {path}, which does not exist (an incomplete copy?)")
            handle = self._handles[name] = _open(path)
            self._mapped[name] = _MappedFile(path)
            aliases = _aliases(handle, path)
            self._where.update({key: (name, key) for key in handle.keys()})
            self._where.update({alias: (name, key) for alias, key in aliases.items()})
            self._alias_targets.update(aliases.values())
        if weight_map is not None:
            wrong = sorted(key for key, name in weight_map.items() if self._where.get(key, (None,))[0] != name)
            unlisted = sorted(set(self._where) - set(weight_map))
            if wrong or unlisted:
                raise CheckpointError(
                    f"{index} does not match its shards: keys not in the shard it names {wrong[:5]}, "
                    f"keys in no entry {unlisted[:5]}"
                )
        self.files = [os.path.join(directory, name) for name in files]

    def __getitem__(self, key: str) -> torch.Tensor:
        name, stored = self._where[key]
        if stored not in self._alias_targets:
            return self._tensor(name, stored)
        if stored not in self._aliased:
            self._aliased[stored] = self._tensor(name, stored)
        return self._aliased[stored]

    def _tensor(self, name: str, key: str) -> torch.Tensor:
        tensor = self._mapped[name].tensor(key)
        return tensor if tensor is not None else self._handles[name].get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)
