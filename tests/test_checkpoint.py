"""Checkpoint layout, from_pretrained, compatibility with the original library, bad input."""

from __future__ import annotations

import argparse
import json
import os
import sys

import pytest
import torch

from sat.model import AutoModel, BaseMixin, BaseModel
from sat.training.model_io import CheckpointError, load_checkpoint, save_checkpoint

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "original_sat")
sys.path.insert(0, FIXTURES)
from make_fixtures import CONFIGS, logits_of  # noqa: E402


def _save(model, args, folder, iteration=1):
    args.save = folder
    save_checkpoint(iteration, model, None, None, args)
    return folder


class Adapter(BaseMixin):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(32))
        self.reinit_calls = 0

    @BaseMixin.non_conflict
    def final_forward(self, logits, old_impl=None, **kw_args):
        return old_impl(logits * self.scale, **kw_args)

    def reinit(self, parent_model=None):
        self.reinit_calls += 1
        torch.nn.init.constant_(self.scale, 2.0)


class AdaptedModel(BaseModel):
    def __init__(self, args, **kwargs):
        super().__init__(args, **kwargs)
        self.add_mixin("adapter", Adapter())

    @classmethod
    def add_model_specific_args(cls, parser):
        group = parser.add_argument_group("AdaptedModel")
        group.add_argument("--adapter-flavour", type=str, default="plain")
        return parser


def test_layout_and_model_config(tmp_path, tiny_args, tokens):
    args = tiny_args(num_multi_query_heads=2, is_rotary_emb=True, rotary_base=500.0, tokenizer_type="gpt2")
    args.adapter_flavour = "spicy"
    model = AdaptedModel(args)
    _save(model, args, str(tmp_path), iteration=30)
    assert sorted(os.listdir(tmp_path)) == ["30", "latest", "model_config.json"]
    assert sorted(os.listdir(tmp_path / "30")) == ["manifest.json", "mp_rank_00_model_states.pt"]
    assert (tmp_path / "latest").read_text() == "30"
    config = json.loads((tmp_path / "model_config.json").read_text())
    assert config == {
        "model_class": "AdaptedModel",
        "tokenizer_type": "gpt2",
        "num_layers": 2,
        "hidden_size": 32,
        "num_attention_heads": 4,
        "vocab_size": 100,
        "layernorm_order": "pre",
        "model_parallel_size": 1,
        "max_sequence_length": 64,
        "num_multi_query_heads": 2,
        "is_rotary_emb": True,
        "rotary_base": 500.0,
        "adapter_flavour": "spicy",
    }
    state = torch.load(tmp_path / "30" / "mp_rank_00_model_states.pt", weights_only=True)
    assert list(state) == ["module"]
    assert set(state["module"]) == set(model.state_dict())
    assert "transformer.position_embeddings.inv_freq" in state["module"]


def test_from_pretrained_round_trip_is_exact(tmp_path, tiny_args, tokens):
    ids, pos = tokens
    args = tiny_args(layernorm_order="sandwich", is_gated_mlp=True)
    model = AdaptedModel(args).eval()
    with torch.no_grad():
        model.get_mixin("adapter").scale.uniform_()
    _save(model, args, str(tmp_path))
    expected = model(ids, pos, -1)[0]
    for loader in (AutoModel, AdaptedModel):
        loaded, loaded_args = loader.from_pretrained(str(tmp_path))
        assert type(loaded) is AdaptedModel and not loaded.training
        assert loaded_args.layernorm_order == "sandwich" and loaded_args.adapter_flavour == "plain"
        assert torch.equal(loaded(ids, pos, -1)[0], expected)
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key


def test_from_pretrained_loads_without_random_init(tmp_path, tiny_args, monkeypatch):
    args = tiny_args()
    _save(BaseModel(args), args, str(tmp_path))
    calls = []
    original = torch.nn.init.normal_

    def counting_normal(tensor, *a, **k):
        calls.append(tensor.is_meta)
        return original(tensor, *a, **k)

    monkeypatch.setattr(torch.nn.init, "normal_", counting_normal)
    model, _ = AutoModel.from_pretrained(str(tmp_path))
    assert not any(is_meta is False for is_meta in calls)  # nothing real was initialised
    assert not any(p.is_meta for p in model.parameters())
    assert all(getattr(p, "model_parallel", None) is not None for n, p in model.named_parameters() if "dense" in n)


def test_prefix_overwrite_args_build_only_and_iteration(tmp_path, tiny_args, tokens):
    ids, pos = tokens

    class Pair(torch.nn.Module):
        def __init__(self, args):
            super().__init__()
            self.encoder = BaseModel(args)
            self.decoder = BaseModel(args)

    args = tiny_args()
    pair = Pair(args)
    _save(pair, args, str(tmp_path / "pair"))
    (tmp_path / "pair" / "model_config.json").write_text(
        json.dumps({**json.loads((tmp_path / "pair" / "model_config.json").read_text()), "model_class": "BaseModel"})
    )
    decoder, _ = BaseModel.from_pretrained(str(tmp_path / "pair"), prefix="decoder.")
    assert torch.equal(decoder.eval()(ids, pos, -1)[0], pair.decoder.eval()(ids, pos, -1)[0])
    with pytest.raises(CheckpointError, match="no key of .* starts with prefix 'decoderx.'"):
        BaseModel.from_pretrained(str(tmp_path / "pair"), prefix="decoderx.")

    model = BaseModel(args)
    folder = _save(model, args, str(tmp_path / "single"), iteration=5)
    _save(BaseModel(args), args, folder, iteration=9)
    loaded, loaded_args = AutoModel.from_pretrained(folder, overwrite_args={"hidden_dropout": 0.3})
    assert loaded_args.hidden_dropout == 0.3 and loaded.transformer.embedding_dropout.p == 0.3
    older, _ = AutoModel.from_pretrained(folder, specific_iteration=5)
    assert torch.equal(older.transformer.word_embeddings.weight, model.transformer.word_embeddings.weight)
    assert not torch.equal(loaded.transformer.word_embeddings.weight, model.transformer.word_embeddings.weight)
    built, _ = AutoModel.from_pretrained(folder, build_only=True)
    assert not any(p.is_meta for p in built.parameters())
    assert not torch.equal(built.transformer.word_embeddings.weight, loaded.transformer.word_embeddings.weight)


def test_missing_keys_in_inference_and_finetune(tmp_path, tiny_args, tokens):
    ids, pos = tokens
    args = tiny_args()
    base = BaseModel(args)
    _save(base, args, str(tmp_path))
    with pytest.raises(
        CheckpointError, match=r"lacks weights the model needs for inference: \['mixins.adapter.scale'\]"
    ):
        AdaptedModel.from_pretrained(str(tmp_path))
    finetune_args = tiny_args(mode="finetune")
    model, _ = AdaptedModel.from_pretrained(str(tmp_path), finetune_args)
    assert model.get_mixin("adapter").reinit_calls == 1
    assert torch.equal(model.get_mixin("adapter").scale, torch.full((32,), 2.0))

    pretrain_args = tiny_args(mode="pretrain")
    with pytest.raises(CheckpointError, match="only mixin and cross-attention weights may be missing"):
        AdaptedModel.from_pretrained(str(tmp_path), pretrain_args)

    # force_inference: missing base weights get real, initialised storage.
    adapted = AdaptedModel(args)
    _save(adapted, args, str(tmp_path / "adapted"))
    checkpoint = tmp_path / "adapted" / "1" / "mp_rank_00_model_states.pt"
    state = torch.load(checkpoint, weights_only=True)
    del state["module"]["transformer.layers.1.mlp.dense_h_to_4h.weight"]
    del state["module"]["transformer.layers.1.mlp.dense_h_to_4h.bias"]
    torch.save(state, checkpoint)
    os.remove(checkpoint.parent / "manifest.json")  # edited by hand: its manifest no longer applies
    with pytest.raises(CheckpointError, match="layers.1.mlp.dense_h_to_4h.weight"):
        AutoModel.from_pretrained(str(tmp_path / "adapted"))
    forced, _ = AutoModel.from_pretrained(str(tmp_path / "adapted"), overwrite_args={"force_inference": True})
    weight = forced.transformer.layers[1].mlp.dense_h_to_4h.weight
    assert not weight.is_meta and 0.015 < weight.std().item() < 0.025
    assert torch.isfinite(forced(ids, pos, -1)[0]).all()


def test_unexpected_keys_fail_inference_and_warn_when_finetuning(tmp_path, tiny_args, sat_log):
    args = tiny_args()
    _save(AdaptedModel(args), args, str(tmp_path))
    # For inference the model would silently run without those weights (a mixin not added,
    # fewer layers than the checkpoint): an error naming them.
    with pytest.raises(CheckpointError, match=r"no place for: \['mixins.adapter.scale'\].*force_inference"):
        BaseModel.from_pretrained(str(tmp_path))
    for mode_args in (argparse.Namespace(mode="finetune"), argparse.Namespace(force_inference=True)):
        model, _ = BaseModel.from_pretrained(str(tmp_path), mode_args)
        assert "unexpected keys" in sat_log.text and "mixins.adapter.scale" in sat_log.text
        assert not any(p.is_meta for p in model.parameters())


def test_fewer_layers_than_the_checkpoint_is_an_error(tmp_path, tiny_args):
    args = tiny_args()
    _save(BaseModel(args), args, str(tmp_path))
    with pytest.raises(CheckpointError, match=r"no place for: \['transformer.layers.1.input_layernorm.weight'"):
        AutoModel.from_pretrained(str(tmp_path), overwrite_args={"num_layers": 1})


def test_shape_mismatch_names_the_key(tmp_path, tiny_args):
    args = tiny_args()
    _save(BaseModel(args), args, str(tmp_path))
    with pytest.raises(CheckpointError, match=r"transformer.layers.0.mlp.dense_h_to_4h.weight: checkpoint \(128, 32\)"):
        AutoModel.from_pretrained(str(tmp_path), overwrite_args={"inner_hidden_size": 64})


def test_corrupt_and_malformed_checkpoints(tmp_path, tiny_args):
    args = tiny_args()
    folder = _save(BaseModel(args), args, str(tmp_path / "ckpt"))
    path = os.path.join(folder, "1", "mp_rank_00_model_states.pt")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    damaged = r"1 is damaged: .*mp_rank_00_model_states.pt has \d+ bytes, the manifest"
    with pytest.raises(CheckpointError, match=damaged):
        AutoModel.from_pretrained(folder)
    os.remove(os.path.join(folder, "1", "manifest.json"))  # as the original writes it: the file itself is read
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        AutoModel.from_pretrained(folder)

    torch.save({"weights": {}}, path)
    with pytest.raises(CheckpointError, match=r"has no 'module' entry \(found \['weights'\]\)"):
        AutoModel.from_pretrained(folder)

    torch.save({"module": {}, "args": argparse.Namespace(x=1)}, path)
    with pytest.raises(CheckpointError, match="not safe to load"):
        AutoModel.from_pretrained(folder)

    open(os.path.join(folder, "latest"), "w").write("last")
    with pytest.raises(CheckpointError, match="should hold an iteration number or 'release'"):
        AutoModel.from_pretrained(folder)
    open(os.path.join(folder, "latest"), "w").write("7")
    with pytest.raises(CheckpointError, match=r"missing checkpoint file .*7/mp_rank_00_model_states.pt"):
        AutoModel.from_pretrained(folder)
    os.remove(os.path.join(folder, "latest"))
    with pytest.raises(CheckpointError, match="no 'latest' file"):
        AutoModel.from_pretrained(folder)
    with pytest.raises(CheckpointError, match="has no model_config.json"):
        AutoModel.from_pretrained(str(tmp_path))


def test_unknown_names_raise(tmp_path, tiny_args):
    with pytest.raises(ValueError, match="unknown model name 'no-such-model'"):
        AutoModel.from_pretrained("no-such-model")
    args = tiny_args()
    folder = _save(BaseModel(args), args, str(tmp_path))
    config = json.loads(open(os.path.join(folder, "model_config.json")).read())
    config["model_class"] = "NotAModel"
    open(os.path.join(folder, "model_config.json"), "w").write(json.dumps(config))
    with pytest.raises(ValueError, match="model_class 'NotAModel' is not registered"):
        AutoModel.from_pretrained(folder)


def test_crash_during_save_leaves_previous_checkpoint(tmp_path, tiny_args, tokens, monkeypatch):
    ids, pos = tokens
    args = tiny_args()
    first = BaseModel(args).eval()
    folder = _save(first, args, str(tmp_path))
    expected = first(ids, pos, -1)[0]

    def crash(obj, path):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        _save(BaseModel(args), args, folder, iteration=2)
    monkeypatch.undo()
    assert (tmp_path / "latest").read_text() == "1"
    assert os.listdir(tmp_path / "2") == []  # no partial file left behind
    loaded, _ = AutoModel.from_pretrained(folder)
    assert torch.equal(loaded(ids, pos, -1)[0], expected)


def test_load_checkpoint_api_returns_iteration_and_restores_rng(tmp_path, tiny_args):
    args = tiny_args()
    folder = _save(BaseModel(args), args, str(tmp_path), iteration=12)
    model = BaseModel(args)
    assert load_checkpoint(model, tiny_args(mode="finetune"), load_path=folder) == 0
    assert load_checkpoint(model, tiny_args(mode="inference"), load_path=folder) == 12
    assert not model.training


# --------------------------------------------------------------------------- the original library
def _assert_same_logits(got: dict, recorded_path: str) -> None:
    recorded = torch.load(recorded_path, weights_only=True)
    for kind in ("causal", "full", "padded"):  # the three masks of make_fixtures.inputs()
        assert (got[kind] - recorded[kind]).abs().max() < 1e-6, kind


@pytest.mark.parametrize("name", list(CONFIGS))
def test_checkpoint_written_by_original_loads_with_identical_logits(name):
    folder = os.path.join(FIXTURES, "written_by_original", name)
    model, args = AutoModel.from_pretrained(folder)
    _assert_same_logits(logits_of(model), os.path.join(folder, "logits_by_original.pt"))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_checkpoint_written_here_loads_in_original(tmp_path, name):
    """The committed checkpoint this code wrote was loaded by the original, which recorded its
    logits. Writing it again must give the same files, and our logits must equal its."""
    folder = os.path.join(FIXTURES, "written_by_ours", name)
    model, args = AutoModel.from_pretrained(folder)
    _assert_same_logits(logits_of(model), os.path.join(folder, "logits_by_original.pt"))

    args.save = str(tmp_path)
    save_checkpoint(1, model, None, None, args)
    assert sorted(os.listdir(tmp_path)) == ["1", "latest", "model_config.json"]
    assert (tmp_path / "latest").read_text() == open(os.path.join(folder, "latest")).read()
    assert json.loads((tmp_path / "model_config.json").read_text()) == json.load(
        open(os.path.join(folder, "model_config.json"))
    )
    ours = torch.load(tmp_path / "1" / "mp_rank_00_model_states.pt", weights_only=True)
    committed = torch.load(os.path.join(folder, "1", "mp_rank_00_model_states.pt"), weights_only=True)
    assert list(ours) == list(committed) == ["module"]
    assert list(ours["module"]) == list(committed["module"])
    for key, value in committed["module"].items():
        assert ours["module"][key].dtype == value.dtype and torch.equal(ours["module"][key], value), key
