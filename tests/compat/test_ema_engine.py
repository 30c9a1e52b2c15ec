"""The original's tests/deepspeed_test.json idiom: training_main with ``sat.ops.FusedEmaAdam``
from a DeepSpeed config (ZeRO-1) saves ``<iteration>-ema`` beside each checkpoint."""

from __future__ import annotations

import json
import os

import pytest
import torch
from test_training import ARGV, launch

CONFIG = {
    "train_micro_batch_size_per_gpu": 4,
    "gradient_accumulation_steps": 2,
    "zero_optimization": {"stage": 1},
    "optimizer": {"type": "sat.ops.FusedEmaAdam", "params": {"lr": 0.01, "ema_decay": 0.9}},
}


def _flat(model: torch.nn.Module, group: list[torch.nn.Parameter], names: dict) -> torch.Tensor:
    """The weights of one optimizer group of ``model`` (names from another copy), flattened
    in the group's order, as ZeRO flattens them."""
    weights = dict(model.named_parameters())
    return torch.cat([weights[names[id(p)]].detach().flatten() for p in group])


@pytest.mark.slow
def test_training_main_with_fused_ema_adam_saves_the_ema_weights(tmp_path):
    from sat.checkpoint.manifest import verify_directory
    from sat.model import AutoModel
    from sat.training.deepspeed_training import get_optimizer_param_groups

    config = tmp_path / "deepspeed_test.json"
    config.write_text(json.dumps(CONFIG))
    save = str(tmp_path / "checkpoints")
    argv = [*ARGV, "--train-iters", "4", "--save", save, "--deepspeed_config", str(config)]
    (result,) = launch(str(tmp_path), 1, argv)
    folder = os.path.join(save, result["experiment_name"])
    saved = set(os.listdir(folder))
    assert {"4", "4-ema", "latest", "model_config.json"} <= saved and not any(".partial" in f for f in saved)
    assert sorted(os.listdir(os.path.join(folder, "4-ema"))) == ["manifest.json", "mp_rank_00_model_states.pt"]
    assert verify_directory(os.path.join(folder, "4-ema"), checksums=True) == []
    assert open(os.path.join(folder, "latest")).read() == "4"

    trained, _ = AutoModel.from_pretrained(folder)
    ema, _ = AutoModel.from_pretrained(folder, specific_iteration="4-ema")
    for name, p in trained.named_parameters():  # the run went on from its trained weights
        assert torch.equal(p, result["params"][name]), name
    optimizer = torch.load(os.path.join(folder, "4", "zero_pp_rank_0_mp_rank_00_optim_states.pt"), weights_only=False)
    inner = optimizer["optimizer_state_dict"]["base_optimizer_state"]
    # Each group counts its 4 updates (ZeRO-1 steps one group at a time), in the checkpoint.
    assert [group["num_updates"] for group in inner["param_groups"]] == [4, 4]
    names = {id(p): name for name, p in trained.named_parameters()}
    for index, group in enumerate(get_optimizer_param_groups(trained)):
        shadow = inner["state"][index]["shadow"]
        expected = _flat(ema, group["params"], names)
        assert torch.equal(expected, shadow[: expected.numel()])  # the EMA of the fp32 masters
        assert not torch.equal(_flat(trained, group["params"], names), expected)
