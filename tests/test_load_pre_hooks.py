"""A model's ``load_state_dict`` pre-hooks (renaming keys of older checkpoints) apply on every
loading path: ``from_pretrained`` (weights assigned to a ``meta`` model) and ``load_checkpoint``
into a built model."""

from __future__ import annotations

import os

import torch

from sat.model import AutoModel, BaseModel
from sat.training.model_io import load_checkpoint, save_checkpoint


def _rename_old_embedding(module, state_dict, prefix, *args):
    old = prefix + "transformer.old_word_embeddings.weight"
    if old in state_dict:
        state_dict[prefix + "transformer.word_embeddings.weight"] = state_dict.pop(old)


class RenamingModel(BaseModel):
    def __init__(self, args, **kwargs):
        super().__init__(args, **kwargs)
        self.register_load_state_dict_pre_hook(_rename_old_embedding)


def _old_checkpoint(tiny_args, tmp_path):
    args = tiny_args()
    model = RenamingModel(args).eval()
    args.save = str(tmp_path)
    save_checkpoint(1, model, None, None, args)
    path = tmp_path / "1" / "mp_rank_00_model_states.pt"
    state = torch.load(path, weights_only=True)
    weights = state["module"]
    weights["transformer.old_word_embeddings.weight"] = weights.pop("transformer.word_embeddings.weight")
    torch.save(state, path)
    os.remove(tmp_path / "1" / "manifest.json")  # edited by hand: its manifest no longer applies
    return model, args


def test_pre_hooks_rename_on_the_meta_path(tiny_args, tokens, tmp_path):
    model, _ = _old_checkpoint(tiny_args, tmp_path)
    loaded, _ = AutoModel.from_pretrained(str(tmp_path))
    ids, pos = tokens
    with torch.no_grad():
        assert torch.equal(loaded(ids, pos, -1)[0], model(ids, pos, -1)[0])


def test_pre_hooks_rename_when_loading_into_a_built_model(tiny_args, tokens, tmp_path):
    model, args = _old_checkpoint(tiny_args, tmp_path)
    fresh = RenamingModel(args)
    load_checkpoint(fresh, args, load_path=str(tmp_path))
    ids, pos = tokens
    with torch.no_grad():
        assert torch.equal(fresh(ids, pos, -1)[0], model(ids, pos, -1)[0])
