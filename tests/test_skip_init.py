"""``skip_init`` leaves real, uninitialised weights (filled in by assignment, as conversion
scripts do); ``from_pretrained`` and ``get_meta_model`` build on ``meta`` instead."""

from __future__ import annotations

import torch

import sat.model.pretrained as pretrained
from sat.model import AutoModel, BaseModel
from sat.model.build import get_meta_model
from sat.model.official import BertModel
from sat.training.model_io import save_checkpoint


def test_skip_init_weights_are_real_and_take_assigned_data(tiny_args, tokens):
    ids, pos = tokens
    source = BaseModel(tiny_args()).eval()
    target = BaseModel(tiny_args(skip_init=True)).eval()
    assert not any(p.is_meta for p in target.parameters())
    for sat_param, other in zip(target.parameters(), source.parameters()):
        sat_param.data = other.data  # the conversion scripts' idiom
    assert torch.equal(target(ids, pos, -1)[0], source(ids, pos, -1)[0])


def test_skip_init_mixins_are_real_too(tiny_args):
    args = tiny_args(skip_init=True, num_types=2)
    assert not any(p.is_meta for p in BertModel(args).parameters())


def test_from_pretrained_loads_into_a_meta_build(tmp_path, tiny_args, tokens, monkeypatch):
    ids, pos = tokens
    args = tiny_args()
    source = BaseModel(args).eval()
    args.save = str(tmp_path)
    save_checkpoint(1, source, None, None, args)
    seen = []
    load = pretrained.load_checkpoint

    def recording_load(model, *a, **k):
        seen.append(all(p.is_meta for p in model.parameters()))
        return load(model, *a, **k)

    monkeypatch.setattr(pretrained, "load_checkpoint", recording_load)
    model, _ = AutoModel.from_pretrained(str(tmp_path))
    assert seen == [True]  # nothing allocated before the checkpoint's tensors arrive
    assert torch.equal(model.eval()(ids, pos, -1)[0], source(ids, pos, -1)[0])


def test_meta_build_leaves_no_default_device_behind(tiny_args):
    get_meta_model(tiny_args(), BaseModel)
    assert torch.empty(1).device.type == "cpu"
