"""``device_map``: spread a model's layers over GPUs, the CPU and the disk, as transformers does.

The units of placement are the transformer layers (``BaseTransformerLayer``, with whatever
mixins put inside them, such as LoRA) and the *trunk*: everything outside the layers
(embeddings, final norm, heads, ``mixins.*`` modules). The trunk stays together on the main
device because hooks read its weights outside its modules' own forward (the tied output head
multiplies by ``word_embeddings.weight``), which per-module offloading would leave on ``meta``.

``plan_placement`` decides where each unit goes, before any weight is read, so the checkpoint's
tensors load straight to their devices (``Placement.destinations``); ``Placement.dispatch``
then attaches accelerate's hooks (``dispatch_model``): activations move at layer boundaries,
``"cpu"`` layers under a GPU main device and ``"disk"`` layers are loaded on use, from host
memory or from memory maps in ``offload_folder``. Generation's ``KVCache`` buffers are created
by each layer, on the device it runs on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from sat.checkpoint import DISK, Destinations
from sat.model.layers import BaseTransformerLayer

DeviceMapArg = str | Mapping[str, int | str | torch.device] | None
PLANNERS = ("auto", "balanced", "sequential")
# Keyword arguments the layers fill in place: accelerate must pass these dicts through, not copies.
_IN_PLACE_KWARGS = ["output_this_layer", "output_cross_layer"]


@dataclass
class Placement:
    """Where every unit of a model goes: ``device_map`` from module name to a GPU index,
    ``"cpu"`` or ``"disk"`` (accelerate's form), and the trunk's (main) device."""

    device_map: dict[str, int | str]
    main_device: int | str
    offload_folder: str | None
    layer_classes: list[str]

    def destinations(self) -> Destinations:
        """Each checkpoint tensor's device, or the offload folder, for loading."""
        return Destinations(self.device_map, self.offload_folder)

    def dispatch(self, model: torch.nn.Module) -> None:
        """Attach accelerate's device hooks to the loaded ``model`` and record ``model.device_map``."""
        from accelerate import dispatch_model

        on_disk = DISK in self.device_map.values()
        dispatch_model(
            model,
            device_map=self.device_map,
            main_device=self.main_device,
            offload_dir=self.offload_folder if on_disk else None,
            skip_keys=_IN_PLACE_KWARGS,
            preload_module_classes=self.layer_classes,  # an offloaded layer loads all its weights at once
        )
        model.device_map = dict(self.device_map)
        if on_disk:
            model._weights_may_be_missing = False  # offloaded weights stay on meta between uses

    def devices(self) -> list[int | str]:
        """The devices used, in placement order."""
        return list(dict.fromkeys(self.device_map.values()))


def plan_placement(
    model: torch.nn.Module,
    device_map: DeviceMapArg,
    max_memory: Mapping[int | str, int | str] | None = None,
    offload_folder: str | None = None,
) -> Placement | None:
    """Where each unit of the ``meta``-built ``model`` (already in its load dtype) goes.

    ``device_map``: ``None`` (no placement: returns ``None``), ``"auto"``/``"balanced"`` (layers
    spread evenly over the GPUs, then the CPU, then the disk), ``"sequential"`` (each GPU filled
    before the next), or a dict from module-name prefix to a GPU index, ``"cpu"`` or ``"disk"``
    (``{"": "cpu"}``, ``{"transformer.layers.3": "disk", "": 0}``; the longest prefix wins).
    ``max_memory`` caps each device as in transformers (``{0: "20GiB", "cpu": "60GiB"}``); default:
    what is free. ``"disk"`` needs ``offload_folder``.
    """
    if device_map is None:
        if max_memory is not None or offload_folder is not None:
            raise ValueError("max_memory and offload_folder take effect only with device_map (e.g. device_map='auto')")
        return None
    layers, trunk = placement_units(model)
    if isinstance(device_map, str):
        if device_map not in PLANNERS:
            raise ValueError(f"device_map={device_map!r}: use one of {PLANNERS} or a dict from module name to device")
        units = _plan(model, device_map, layers, trunk, max_memory)
    elif isinstance(device_map, Mapping):
        units = _units_from_dict(model, device_map, layers, trunk)
    else:
        raise TypeError(f"device_map must be a str or a dict, got {type(device_map).__name__}")
    main = units[trunk[0]] if trunk else next(iter(units.values()))
    if main == DISK:
        raise ValueError(
            f"device_map puts {trunk or 'the model'} on 'disk': the modules outside the transformer layers "
            "(embeddings, final norm, heads, mixins) stay on a GPU or the CPU; map them to one"
        )
    if DISK in units.values() and offload_folder is None:
        disk = [name for name, device in units.items() if device == DISK]
        raise ValueError(
            f"device_map puts {disk} on 'disk': pass offload_folder=<a directory> for their weights "
            "(or give max_memory room for them)"
        )
    return Placement(units, main, offload_folder, sorted({type(model.get_submodule(n)).__name__ for n in layers}))


def placement_units(model: torch.nn.Module) -> tuple[list[str], list[str]]:
    """``(layers, trunk)``: the names of the transformer layers, and of the fewest modules that
    hold every other tensor (each contains no layer)."""
    layers: list[str] = []
    trunk: list[str] = []
    seen: set[int] = set()

    def visit(module: torch.nn.Module, name: str) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        if isinstance(module, BaseTransformerLayer):
            layers.append(name)
        elif not any(isinstance(m, BaseTransformerLayer) for m in module.modules()):
            if module.state_dict():
                trunk.append(name)
        else:
            own = [*dict(module.named_parameters(recurse=False)), *dict(module.named_buffers(recurse=False))]
            if own:
                raise ValueError(
                    f"{name or type(module).__name__} holds tensors {own} beside transformer layers: device_map "
                    "places layers and the modules around them, so move these into a submodule"
                )
            for child_name, child in module.named_children():
                visit(child, f"{name}.{child_name}" if name else child_name)

    visit(model, "")
    return layers, trunk


def _plan(
    model: torch.nn.Module, how: str, layers: list[str], trunk: list[str], max_memory: Mapping | None
) -> dict[str, int | str]:
    """The trunk on the first device, then the layers in order, each on the first device with room
    left (disk last), keeping on the main device room for the largest layer loaded on use."""
    from accelerate.utils import compute_module_sizes, get_balanced_memory, get_max_memory

    budgets = get_max_memory(dict(max_memory) if max_memory is not None else None)
    if how != "sequential" and sum(isinstance(d, int) for d in budgets) > 1:
        budgets = get_balanced_memory(model, budgets, no_split_module_classes=[BaseTransformerLayer.__name__])
    sizes = compute_module_sizes(model)
    devices = [device for device in budgets if device != DISK]
    if not devices:
        raise ValueError(f"max_memory={dict(max_memory)} names no GPU or 'cpu' for the embeddings and head")
    left = dict(budgets)
    left[devices[0]] -= max((sizes[name] for name in layers), default=0)  # room to load an offloaded layer
    units: dict[str, int | str] = {}
    for name in trunk:
        units[name] = devices[0]
        left[devices[0]] -= sizes[name]
    current = 0
    for name in layers:
        while current < len(devices) and sizes[name] > left[devices[current]]:
            current += 1
        device = devices[current] if current < len(devices) else DISK
        units[name] = device
        if device != DISK:
            left[device] -= sizes[name]
    return units


def _units_from_dict(
    model: torch.nn.Module, device_map: Mapping, layers: list[str], trunk: list[str]
) -> dict[str, int | str]:
    """Each unit's device from a user's dict of module-name prefixes (the longest one wins)."""
    names = dict(model.named_modules())
    entries = {}
    for key, device in device_map.items():
        if key and key not in names:
            raise ValueError(f"device_map names {key!r}, which is not a module of {type(model).__name__}")
        inside = [layer for layer in layers if key.startswith(layer + ".")]
        if inside:
            raise ValueError(f"device_map names {key!r} inside layer {inside[0]}: a layer is the unit of placement")
        entries[key] = _device(key, device)
    units, uncovered = {}, []
    for unit in [*trunk, *layers]:
        owners = [key for key in entries if key == "" or unit == key or unit.startswith(key + ".")]
        if owners:
            units[unit] = entries[max(owners, key=len)]
        else:
            uncovered.append(unit)
    if uncovered:
        raise ValueError(f"device_map gives no device for {uncovered}; add them, or a prefix ('' for all)")
    trunk_devices = {units[name] for name in trunk}
    if len(trunk_devices) > 1:
        raise ValueError(
            f"device_map splits the modules outside the layers ({trunk}) over {sorted(map(str, trunk_devices))}: "
            "they share one device (the tied head reads the embedding weight)"
        )
    return units


def _device(key: str, device: int | str | torch.device) -> int | str:
    """A device-map value as accelerate takes it: a GPU index, ``"cpu"`` or ``"disk"``."""
    if isinstance(device, torch.device):
        device = device.index if device.type == "cuda" else device.type
    elif isinstance(device, str) and device.startswith("cuda"):
        device = torch.device(device).index or 0
    if device in ("cpu", DISK):
        return device
    if isinstance(device, int) and not isinstance(device, bool) and 0 <= device:
        if device >= torch.cuda.device_count():
            raise ValueError(f"device_map[{key!r}] = {device}: this machine has {torch.cuda.device_count()} GPUs")
        return device
    raise ValueError(f"device_map[{key!r}] = {device!r}: use a GPU index, 'cpu' or 'disk'")
