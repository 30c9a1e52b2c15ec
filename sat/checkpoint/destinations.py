"""Where each checkpoint tensor goes while it loads: a device per module, or the disk.

A device map (``{"transformer.layers.0": 0, "transformer.layers.1": "cpu",
"transformer.layers.2": "disk"}``) names modules; a tensor goes where the longest module name
that prefixes its key says. Tensors bound for ``"disk"`` are written to ``offload_folder`` in
accelerate's offload format (one ``<key>.dat`` memory map each and ``index.json``) and their
parameters stay on ``meta``: the placement (``sat.model.placement``) loads them on use.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import torch

from sat.checkpoint.atomic import atomic_write_text
from sat.checkpoint.page_release import release_pages

DISK = "disk"


class Destinations:
    """The device (or ``"disk"``) of every state-dict key, from a module-name device map."""

    def __init__(self, device_map: Mapping[str, torch.device | str], offload_folder: str | None = None):
        self.device_map = dict(device_map)
        self.offload_folder = offload_folder
        self.offload_index: dict[str, dict] = {}
        if DISK in self.device_map.values() and offload_folder is None:
            raise ValueError("a device map with 'disk' entries needs offload_folder")

    def device(self, key: str) -> torch.device | str:
        """Where ``key``'s tensor goes: a ``torch.device``, or ``"disk"``."""
        owner = key
        while owner not in self.device_map:
            if not owner:
                raise KeyError(f"the device map names no module holding {key}: {sorted(self.device_map)}")
            owner = owner.rpartition(".")[0]
        device = self.device_map[owner]
        return device if device == DISK else torch.device(device)

    def offload(self, key: str, tensor: torch.Tensor) -> None:
        """Write ``tensor`` (already in the model's dtype) to the offload folder as ``key``."""
        from accelerate.utils import offload_weight

        os.makedirs(self.offload_folder, exist_ok=True)
        offload_weight(tensor, key, self.offload_folder, index=self.offload_index)
        release_pages(tensor)  # a memory-mapped source would otherwise stay resident

    def finish(self) -> None:
        """Write the offload folder's ``index.json`` (what accelerate reads the weights by)."""
        if self.offload_index:
            index_path = os.path.join(self.offload_folder, "index.json")
            atomic_write_text(index_path, json.dumps(self.offload_index, indent=1))
