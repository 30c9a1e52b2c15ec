"""GLM4VModel: checkpoints of the original 0.4.12 both ways, generation from an image with the
KV cache, the image's effect on the output, and LoRA on the language part only."""

from __future__ import annotations

import os
import shutil
import sys

import pytest
import torch
from lm_checks import to_fill, with_cache
from model_checks import assert_recorded, check_sat_model, check_written_here_loads_in_original

from sat.generation import BaseStrategy, filling_sequence
from sat.model import AutoModel
from sat.model.finetune import freeze_all_but
from sat.model.finetune.lora2 import LoraMixin
from sat.model.official.glm4v_model import GLM4VModel  # the original's module path
from sat.training.model_io import save_checkpoint

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "original_zoo")
sys.path.insert(0, FIXTURES)
from make_eva_fixtures import GLM4V, eva_inputs, eva_outputs, vision_kwargs  # noqa: E402

IMAGE, IDS, IMAGE_MASK = eva_inputs()  # [2, 3, 16, 16], [2, 12], [2, 12]: boi, 4 image tokens, eoi at 2..7
NEW_TOKENS = 16


def tiny(seed: int = 0) -> tuple[GLM4VModel, object]:
    """The fixture's GLM-4V (a 2-layer ChatGLM4, a 2-layer EVA2-CLIP tower) with room for 28
    positions, weights sharpened so greedy continuations vary."""
    args = GLM4VModel.get_args(**{**GLM4V, "max_sequence_length": 64})
    torch.manual_seed(seed)
    model = GLM4VModel(args).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(4.0 if param.dim() > 1 else 1.0)
    return model, args


def logits(model, image=IMAGE) -> torch.Tensor:
    return model(input_ids=IDS, image_embed_mask=IMAGE_MASK, **vision_kwargs(image))[0]  # [2, 12, vocab]


def cached_greedy(model, image: torch.Tensor) -> torch.Tensor:
    """``filling_sequence`` with the cache, greedy, on the first row's prompt and ``image [1, ...]``."""
    seq = to_fill(IDS[0], NEW_TOKENS)
    vision = vision_kwargs(image)
    tokens, _ = filling_sequence(
        with_cache(model), seq, 1, BaseStrategy(top_k=1), image_embed_mask=IMAGE_MASK[:1], **vision
    )
    return tokens  # [1, 12 + NEW_TOKENS]


def uncached_greedy(model, image: torch.Tensor) -> torch.Tensor:
    """Greedy by full forwards (the image re-embedded at every step)."""
    tokens = IDS[:1]
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            step = model(input_ids=tokens, image_embed_mask=IMAGE_MASK[:1], **vision_kwargs(image))[0][:, -1]
            tokens = torch.cat((tokens, step.argmax(-1, keepdim=True)), dim=1)
    return tokens


def test_checkpoint_of_the_original_loads_with_identical_outputs():
    folder = os.path.join(FIXTURES, "written_by_original", "glm4v")
    model, _ = AutoModel.from_pretrained(folder)
    assert type(model) is GLM4VModel and list(model.mixins) == ["chatglm-final", "attn", "mlp", "eva"]
    # logits with the image, text only, and a past_key_values step after the image prompt
    assert_recorded(eva_outputs(model), os.path.join(folder, "logits_by_original.pt"), atol=1e-6)


def test_checkpoint_written_here_loads_in_original(tmp_path):
    check_written_here_loads_in_original(os.path.join(FIXTURES, "written_by_ours", "glm4v"), eva_outputs, tmp_path)


def test_exported_registered_and_original_names():
    import sat.model

    assert sat.model.GLM4VModel is GLM4VModel and sat.model.get_model_class("GLM4VModel") is GLM4VModel
    model, args = tiny()
    assert args.proj_hidden_size == 20 and model.image_length == 4
    state = model.state_dict()
    assert state["mixins.eva.boi"].shape == state["mixins.eva.eoi"].shape == (1, 1, 32)
    assert state["mixins.eva.conv.weight"].shape == (20, 16, 2, 2)  # tower hidden 16 -> proj 20, 2 x 2 stride 2
    assert state["mixins.eva.linear_proj.linear_proj.weight"].shape == (32, 20)
    assert state["mixins.eva.linear_proj.gate_proj.weight"].shape == (24, 32)
    assert "mixins.eva.vit_model.transformer.layers.1.attention.query_key_value.weight" in state


def test_cached_generation_equals_uncached_given_an_image():
    model, _ = tiny()
    tokens = cached_greedy(model, IMAGE[:1])
    assert torch.equal(tokens, uncached_greedy(model, IMAGE[:1]))
    assert len(set(tokens[0, 12:].tolist())) > 3  # a varied continuation


def test_the_image_changes_the_output():
    model, _ = tiny()
    with torch.no_grad():
        first, other = logits(model), logits(model, IMAGE.flip(0))  # each row given the other row's image
        text = model(input_ids=IDS)[0]
    assert torch.equal(first[:, :2], other[:, :2])  # the tokens before the image are causal: untouched
    assert (first[:, 8:] - other[:, 8:]).abs().max() > 1e-2  # the text after it reads it
    assert (first[:, 8:] - text[:, 8:]).abs().max() > 1e-2
    assert not torch.equal(cached_greedy(model, IMAGE[:1]), cached_greedy(model, IMAGE[1:]))


def test_an_image_mask_of_the_wrong_size_is_refused():
    model, _ = tiny()
    short = IMAGE_MASK.clone()
    short[:, 7] = 0  # 5 places for boi, 4 image tokens and eoi
    with pytest.raises(ValueError, match=r"marks \[5, 5\] places per row; each image gives 6 embeddings"):
        model(input_ids=IDS, image_embed_mask=short, **vision_kwargs(IMAGE))
    with pytest.raises(ValueError, match=r"vision inputs \['attention_mask', 'image', 'input_ids'\] given without"):
        model(input_ids=IDS, **vision_kwargs(IMAGE))


def test_without_eva_args_the_tower_loads_from_sat_home_and_is_recorded(tmp_path, monkeypatch):
    tower = os.path.join(FIXTURES, "written_by_original", "eva2clip")
    shutil.copytree(tower, tmp_path / "eva-clip-4b-14-x-drop-last-layer")
    monkeypatch.setenv("SAT_HOME", str(tmp_path))
    args = GLM4VModel.get_args(**{**GLM4V, "eva_args": {}})
    model = GLM4VModel(args)
    expected, _ = AutoModel.from_pretrained(tower)
    assert all(torch.equal(p, q) for p, q in zip(model.mixins.eva.vit_model.parameters(), expected.parameters()))
    assert args.eva_args["model_class"] == "EVA2CLIPModel" and args.eva_args["hidden_size"] == 16
    args.save = str(tmp_path / "glm4v")
    save_checkpoint(1, model, None, None, args)
    monkeypatch.delenv("SAT_HOME")  # the reload builds the tower from model_config.json's eva_args
    loaded, _ = AutoModel.from_pretrained(args.save)
    assert torch.equal(logits(loaded.eval()), logits(model.eval()))


def test_without_eva_args_a_missing_tower_checkpoint_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("SAT_HOME", str(tmp_path))
    args = GLM4VModel.get_args(**{**GLM4V, "eva_args": {}})
    with pytest.raises(ValueError, match="--eva_args is empty, so the EVA2-CLIP tower is loaded from .*eva-clip-4b"):
        GLM4VModel(args)


def test_lora_on_the_language_part_leaves_the_tower_frozen():
    model, _ = tiny()
    model.add_mixin("lora", LoraMixin(2, r=4), reinit=True)
    trainable = freeze_all_but(model, ["matrix_A", "matrix_B"])
    assert trainable and all(name.startswith("transformer.layers.") for name in trainable)  # none in the tower
    tower = {name: p.detach().clone() for name, p in model.mixins.eva.named_parameters()}
    lora = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(logits(model)[:, 8:-1].flatten(0, 1), IDS[:, 9:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(torch.equal(p, tower[name]) for name, p in model.mixins.eva.named_parameters())
    assert all(not torch.equal(p, lora[name]) for name, p in model.named_parameters() if p.requires_grad)


def test_sat_model_trains_saves_and_reloads(tmp_path):
    model, args = tiny()
    check_sat_model(model, args, logits, tmp_path)
