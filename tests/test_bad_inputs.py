"""Bad input as a new user would try it: every case gets an error that names the file, key,
argument or value, and no pickle that would run code is ever executed."""

from __future__ import annotations

import argparse
import json
import os

import pytest
import torch

from sat import get_args
from sat.checkpoint import CheckpointError, load_torch_file
from sat.model import AutoModel, BaseModel, GPT2Model
from sat.training.model_io import save_checkpoint


def _saved(tmp_path, tiny_args, name="ckpt"):
    args = tiny_args()
    model = BaseModel(args)
    args.save = str(tmp_path / name)
    save_checkpoint(1, model, None, None, args)
    return model, args.save


class _PlantsMarker:
    """Unpickling this would create the marker directory: proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


# --------------------------------------------------------------------------- loading
def test_model_config_errors_name_the_file(tmp_path, tiny_args):
    _, folder = _saved(tmp_path, tiny_args)
    config_path = os.path.join(folder, "model_config.json")
    config = open(config_path).read()
    open(config_path, "w").write("{not json")
    with pytest.raises(CheckpointError, match=r"model_config.json is not valid JSON"):
        AutoModel.from_pretrained(folder)
    open(config_path, "w").write(json.dumps({**json.loads(config), "model_class": "NoSuchModel"}))
    with pytest.raises(ValueError, match=r"model_config.json: model_class 'NoSuchModel' is not registered"):
        AutoModel.from_pretrained(folder)


def test_force_inference_initialises_missing_weights_like_their_module(tmp_path, tiny_args, sat_log):
    """A missing LayerNorm weight becomes ones (its reset_parameters), not zeros: zeros would give
    the same logits at every position."""
    model, folder = _saved(tmp_path, tiny_args)
    path = os.path.join(folder, "1", "mp_rank_00_model_states.pt")
    state = torch.load(path, weights_only=True)
    del state["module"]["transformer.final_layernorm.weight"]
    torch.save(state, path)
    os.remove(os.path.join(folder, "1", "manifest.json"))  # the file changed on purpose
    with pytest.raises(CheckpointError, match=r"lacks weights .*final_layernorm.weight.*force_inference"):
        AutoModel.from_pretrained(folder)
    loaded, _ = AutoModel.from_pretrained(folder, argparse.Namespace(force_inference=True))
    assert torch.equal(loaded.transformer.final_layernorm.weight, torch.ones(32))
    # Its module's other tensor is the checkpoint's, not re-initialised.
    assert torch.equal(loaded.transformer.final_layernorm.bias, model.transformer.final_layernorm.bias)
    assert "final_layernorm.weight']: initialised by their modules' reset_parameters" in sat_log.text


def test_model_parallel_mismatch_says_how_to_load_in_this_run(tmp_path, tiny_args):
    _, folder = _saved(tmp_path, tiny_args)
    config_path = os.path.join(folder, "model_config.json")
    config = json.load(open(config_path))
    json.dump({**config, "model_parallel_size": 2}, open(config_path, "w"))
    with pytest.raises(ValueError, match=r"model_parallel_size=2.*overwrite_args=\{'model_parallel_size'"):
        AutoModel.from_pretrained(folder)


# --------------------------------------------------------------------------- no code runs on load
def test_malicious_pickles_are_refused_and_never_run(tmp_path, tiny_args):
    marker = str(tmp_path / "code-ran")
    _, folder = _saved(tmp_path, tiny_args)
    # A model file (from_pretrained) ...
    path = os.path.join(folder, "1", "mp_rank_00_model_states.pt")
    torch.save({"module": {}, "payload": _PlantsMarker(marker)}, path)
    os.remove(os.path.join(folder, "1", "manifest.json"))
    with pytest.raises(CheckpointError, match=r"mp_rank_00_model_states.pt holds objects that are not safe to load"):
        AutoModel.from_pretrained(folder)
    # ... a random-state file, as resume reads it ...
    rng_path = str(tmp_path / "rng_rank_0.pt")
    torch.save({"torch_rng_state": _PlantsMarker(marker)}, rng_path)
    with pytest.raises(CheckpointError, match=r"rng_rank_0.pt holds objects that are not safe to load"):
        load_torch_file(rng_path)
    # ... DeepSpeed's own state file, through the checkpoint engine the training loop installs ...
    from sat.training.checkpointing import _SafeCheckpointEngine

    optim_path = str(tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    torch.save({"optimizer_state_dict": _PlantsMarker(marker)}, optim_path)
    with pytest.raises(CheckpointError, match=r"optim_states.pt holds objects that are not safe to load"):
        _SafeCheckpointEngine(None).load(optim_path)
    # ... and an HF pytorch_model.bin.
    from transformers import GPT2Config

    hf_dir = tmp_path / "hf"
    GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=100, n_positions=64).save_pretrained(hf_dir)
    torch.save({"wte.weight": _PlantsMarker(marker)}, hf_dir / "pytorch_model.bin")
    from sat.hf import from_hf

    with pytest.raises(CheckpointError, match=r"pytorch_model.bin holds objects that are not safe to load"):
        from_hf(str(hf_dir))
    assert not os.path.exists(marker)


# --------------------------------------------------------------------------- arguments
def test_get_args_near_miss_is_an_error_and_other_keys_are_kept():
    with pytest.raises(TypeError, match="get_args got num_layrs=3: did you mean num_layers"):
        GPT2Model.get_args(num_layrs=3)
    # The original sets keys it does not know (user code carries its own settings that way).
    assert GPT2Model.get_args(my_setting=7).my_setting == 7


def test_get_args_unknown_flag_and_wrong_type_exit_2_naming_them(capsys):
    with pytest.raises(SystemExit) as exit_info:
        get_args(["--no-such-flag"])
    assert exit_info.value.code == 2 and "--no-such-flag" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        get_args(["--num-layers", "three"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--num-layers" in err and "'three'" in err


# --------------------------------------------------------------------------- forward
def test_forward_errors_name_the_argument(tiny_args, tokens):
    ids, pos = tokens
    model = BaseModel(tiny_args())
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 100\) \(vocab_size = 100\); got values from"):
        model(ids + 100, pos, -1)
    with pytest.raises(ValueError, match=r"position_ids must lie in \[0, 64\) \(max_sequence_length = 64\)"):
        model(ids, pos + 60, -1)
    with pytest.raises(
        ValueError,
        match=r"attention_mask of shape \(1, 1, 5, 5\) does not fit the attention: expected "
        r"4-D, broadcastable to \[batch, heads, seq_q, seq_k\] = \[2, 4, 10, 10\]",
    ):
        model(ids, pos, torch.ones(1, 1, 5, 5))
    # A [batch, seq] padding mask would broadcast as [1, seq_k] and silently drop causality.
    with pytest.raises(ValueError, match=r"looks like a \[batch, seq\] padding mask: pass mask\[:, None, None, :\]"):
        model(ids, pos, torch.ones(2, 10))
    # A 2-D [seq_q, seq_k] mask broadcasts over the batch, as in the original.
    causal = torch.tril(torch.ones(10, 10))
    assert torch.equal(model(ids, pos, causal)[0], model(ids, pos, causal[None, None])[0])


# --------------------------------------------------------------------------- data
def test_empty_dataset_names_the_path(tmp_path):
    from sat.data_utils import make_dataset_full

    args = argparse.Namespace(
        iterable_dataset=False, train_iters=10, batch_size=2, seed=1, block_size=100, valid_data=None, test_data=None
    )
    with pytest.raises(ValueError, match=r"empty dataset for 'train.bin'"):
        make_dataset_full(["train.bin"], None, args, lambda path, args: [], is_train_data=True)


def test_failed_loads_leave_the_checkpoint_untouched(tmp_path, tiny_args):
    _, folder = _saved(tmp_path, tiny_args)

    def snapshot() -> dict[str, bytes]:
        return {
            os.path.relpath(os.path.join(root, name), folder): open(os.path.join(root, name), "rb").read()
            for root, _, names in os.walk(folder)
            for name in names
        }

    before = snapshot()
    for overwrite in ({"num_layers": 1}, {"hidden_size": 64}, {"model_parallel_size": 2}):
        with pytest.raises((CheckpointError, ValueError)):
            AutoModel.from_pretrained(folder, overwrite_args=overwrite)
    assert snapshot() == before
