"""EVA2CLIPModel: checkpoints of the original 0.4.12 both ways, its layer order, and the checks
every model class goes through."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from distributed import gathered_grads, run_workers
from model_checks import assert_recorded, check_sat_model, check_written_here_loads_in_original

from sat.model import AutoModel
from sat.model.official.eva_clip_model import EVA2CLIPModel  # the original's module path
from sat.training.model_io import save_checkpoint

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "original_zoo")
sys.path.insert(0, FIXTURES)
from make_eva_fixtures import TOWER, eva_inputs, eva_outputs  # noqa: E402

IMAGE = eva_inputs()[0]  # [2, 3, 16, 16]


def features(model: torch.nn.Module) -> torch.Tensor:
    return model(torch.zeros(2, 1, dtype=torch.long), None, None, image=IMAGE)[0]  # [2, 16, 16]


# eva2clip_real: the real tower's options (post order, no final norm, row-parallel bias not last)
@pytest.mark.parametrize("name", ["eva2clip", "eva2clip_real"])
def test_checkpoint_of_the_original_loads_with_identical_outputs(name):
    folder = os.path.join(FIXTURES, "written_by_original", name)
    model, _ = AutoModel.from_pretrained(folder)
    assert type(model) is EVA2CLIPModel
    assert list(model.mixins) == ["patch_embedding", "pos_embedding", "final", "newpost"]
    assert_recorded(eva_outputs(model), os.path.join(folder, "logits_by_original.pt"), atol=1e-6)


# Without a final norm the real tower's features reach |4|, where 1e-6 is 2 float32 ulps: 2e-6.
@pytest.mark.parametrize("name, atol", [("eva2clip", 1e-6), ("eva2clip_real", 2e-6)])
def test_checkpoint_written_here_loads_in_original(name, atol, tmp_path):
    folder = os.path.join(FIXTURES, "written_by_ours", name)
    check_written_here_loads_in_original(folder, eva_outputs, tmp_path, atol=atol)


def test_exported_registered_and_original_argument_names():
    import sat.model

    assert sat.model.EVA2CLIPModel is EVA2CLIPModel and sat.model.get_model_class("EVA2CLIPModel") is EVA2CLIPModel
    args = EVA2CLIPModel.get_args(**TOWER)
    assert (args.pre_len, args.post_len, args.in_channels, args.max_sequence_length) == (1, 0, 3, 17)
    assert not hasattr(args, "num_classes")  # no classifier: ViT's head arguments are not its own


def test_layers_normalise_each_branch_output_and_drop_cls():
    torch.manual_seed(0)
    model = EVA2CLIPModel(EVA2CLIPModel.get_args(**{**TOWER, "num_layers": 1})).eval()
    t, layer = model.transformer, model.transformer.layers[0]
    with torch.no_grad():
        x = torch.cat(
            (
                t.word_embeddings.weight[:1].expand(2, 1, -1),
                model.mixins.patch_embedding.proj(IMAGE).flatten(2).transpose(1, 2),
            ),
            1,
        )
        x = x + t.position_embeddings.weight  # [2, 17, 16]
        x = x + layer.input_layernorm(layer.attention(x, None, layer_id=0))
        x = x + layer.post_attention_layernorm(layer.mlp(x, layer_id=0))
        expected = t.final_layernorm(x)[:, 1:]  # [2, 16, 16]
        assert (features(model) - expected).abs().max() < 1e-6


def test_sat_model_trains_saves_and_reloads(tmp_path):
    torch.manual_seed(0)
    args = EVA2CLIPModel.get_args(**TOWER, drop_path=0.1)
    check_sat_model(EVA2CLIPModel(args), args, features, tmp_path)


def probe_loss(outputs: torch.Tensor) -> torch.Tensor:
    """A loss whose gradient is well conditioned. Not ``outputs.square().mean()``: the outputs
    leave a LayerNorm, whose mean square is 1 whatever its input, so the gradients before it
    would be rounding noise (MP1 and MP2 differed by 0.3% of their size)."""
    probe = torch.randn(outputs.shape, generator=torch.Generator().manual_seed(1))
    return (outputs * probe).mean()


def _mp_worker(rank: int, world: int, folder: str) -> dict:
    model, _ = AutoModel.from_pretrained(folder, overwrite_args={"model_parallel_size": world})
    outputs = features(model)
    probe_loss(outputs).backward()
    rows = model.transformer.layers[0].attention.query_key_value.weight.shape[0]
    return {"outputs": outputs.detach(), "grads": gathered_grads(model), "qkv rows": rows}


@pytest.mark.multiprocess
def test_mp2_outputs_and_gradients_equal_mp1(tmp_path):
    torch.manual_seed(0)
    args = EVA2CLIPModel.get_args(**TOWER)
    model = EVA2CLIPModel(args)
    args.save = str(tmp_path)
    save_checkpoint(1, model, None, None, args)
    outputs = features(model)
    probe_loss(outputs).backward()
    for result in run_workers(_mp_worker, 2, str(tmp_path)):
        assert result["qkv rows"] == 3 * 16 // 2  # each rank holds one of the two heads
        assert (result["outputs"] - outputs).abs().max() < 1e-5
        for name, param in model.named_parameters():
            relative = (result["grads"][name] - param.grad).abs().max() / param.grad.abs().max()
            assert relative < 1e-5, (name, relative.item())
