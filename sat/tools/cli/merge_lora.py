"""``sat merge-lora SRC DST``: fold the LoRA adapters of a finetuned checkpoint into its weights
(``LoraMixin.merge_lora``) and save a plain checkpoint of the base class, which loads and
converts (``sat convert --to hf``) without the mixin.

The adapters' rank and layers are read from SRC's weights (``...matrix_A.N`` of shape
``[r, in]``); their scaling needs ``lora_alpha``: ``--lora-alpha``, else the value SRC's
``model_config.json`` records.
"""

from __future__ import annotations

import argparse
import os
import re

from sat.tools.cli.common import (
    add_command,
    add_import_option,
    add_source_and_target,
    copy_recorded_tokenizer,
    import_modules,
)
from sat.tools.cli.models import check_exists

EXAMPLE = """example:
  sat merge-lora ./finetuned-lora ./finetuned-merged --lora-alpha 16
"""
_ADAPTER = re.compile(r"transformer\.layers\.(\d+)\.(attention|cross_attention)\.\w+\.matrix_A\.\d+")


def register(subparsers) -> None:
    """Add ``merge-lora`` to ``subparsers``."""
    parser = add_command(
        subparsers, "merge-lora", run, "merge LoRA adapters into a plain checkpoint", __doc__ + "\n" + EXAMPLE
    )
    add_source_and_target(
        parser, "a sat checkpoint saved with LoraMixin (model-parallel size 1)", "the directory to write"
    )
    parser.add_argument("--lora-alpha", type=float, default=None, help="LoraMixin's lora_alpha (scaling alpha / r)")
    add_import_option(parser)


def adapter_layout(state) -> tuple[int, list[int], bool]:
    """``(r, layer_range, cross_attention)`` of the LoRA weights in a state dict; a ValueError
    when it has none."""
    ranks, layers, cross = set(), set(), False
    for key in state.keys():
        match = _ADAPTER.fullmatch(key)
        if match:
            ranks.add(state[key].shape[0])
            layers.add(int(match.group(1)))
            cross = cross or match.group(2) == "cross_attention"
    if not ranks:
        raise ValueError(
            "the checkpoint holds no LoRA weights (no transformer.layers.N...matrix_A.M): nothing to merge"
        )
    if len(ranks) > 1:
        raise ValueError(f"the checkpoint's LoRA adapters have different ranks {sorted(ranks)}; merge them in Python")
    return ranks.pop(), sorted(layers), cross


def run(options: argparse.Namespace) -> None:
    """Load ``options.source`` with its adapters, merge them, save ``options.target``."""
    from sat.checkpoint import (
        get_checkpoint_iteration,
        load_checkpoint,
        model_config_path,
        read_checkpoint_file,
        read_model_config,
        save_module_checkpoint,
        saved_model_parallel_size,
        shard_path,
    )
    from sat.model import AutoModel
    from sat.model.finetune import LoraMixin

    import_modules(options.imports)
    check_exists(options.source)
    config = read_model_config(model_config_path(options.source))
    number, release, _ = get_checkpoint_iteration(options.source)
    iteration_dir = os.path.join(options.source, "release" if release else str(number))
    if saved_model_parallel_size(iteration_dir) != 1:
        raise ValueError(
            f"{options.source} has model-parallel shards: merge them first with sat reshard --model-parallel-size 1"
        )
    r, layers, cross = adapter_layout(read_checkpoint_file(shard_path(iteration_dir, 0))["module"])
    alpha = options.lora_alpha if options.lora_alpha is not None else config.get("lora_alpha")
    if alpha is None:
        raise ValueError(f"{model_config_path(options.source)} records no lora_alpha: pass --lora-alpha")

    model, args = AutoModel.from_pretrained(options.source, build_only=True)
    lora = LoraMixin(len(model.transformer.layers), r, alpha, layer_range=layers, cross_attention=cross)
    model.add_mixin("lora", lora, reinit=True)
    load_checkpoint(model, args, load_path=options.source)
    lora.merge_lora()
    model.del_mixin("lora")
    tokenizer = copy_recorded_tokenizer(options.source, options.target)
    if tokenizer is not None:
        args.tokenizer_type = tokenizer
    args.save = options.target
    save_module_checkpoint(number if not release else "release", model.eval(), args)
    print(
        f"wrote {options.target}: {type(model).__name__} with LoRA (r={r}, alpha={alpha}) merged into layers {layers}"
    )
