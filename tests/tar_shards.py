"""Tiny webdataset tar shards for the data tests."""

from __future__ import annotations

import io
import tarfile


def write_shards(folder, shards: int, per_shard: int, start: int = 0) -> list[str]:
    """``folder/NNN.tar`` (NNN from ``start``) holding samples ``sSS_I``, each a ``.txt`` file (its
    key) and an ``.id`` file (its index in the shard)."""
    paths = []
    for s in range(start, start + shards):
        path = folder / f"{s:03d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                key = f"s{s}_{i}"
                for ext, data in (("txt", key.encode()), ("id", str(i).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(str(path))
    return paths
