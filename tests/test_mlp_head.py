"""MLPHeadMixin: a classification head in place of BERT's masked-LM head."""

import argparse

import pytest
import torch
import torch.nn.functional as F

from sat.model import AutoModel, BaseMixin
from sat.model.mixins import MLPHeadMixin
from sat.model.official import BertModel
from sat.training.model_io import load_checkpoint, save_checkpoint

IDS = torch.randint(0, 100, (4, 10), generator=torch.Generator().manual_seed(0))
POSITIONS = torch.arange(10).expand(4, 10)
LABELS = torch.tensor([0, 1, 1, 0])


class HiddenStates(BaseMixin):
    def final_forward(self, logits, **kw_args):
        return logits


ARGS = BertModel.get_args(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=100, max_sequence_length=16)


def classifier() -> BertModel:
    torch.manual_seed(0)
    model = BertModel(ARGS, layernorm_order="post")
    model.del_mixin("bert-final")
    model.add_mixin("classification_head", MLPHeadMixin(32, 16, 2, init_std=0.1))
    return model


def class_logits(model) -> torch.Tensor:
    return model(IDS, POSITIONS, None, token_type_ids=torch.zeros_like(IDS))[0][:, 0]  # [b, 2] from token 0


def test_head_maps_hidden_states_through_the_mlp():
    model = classifier().eval()
    head = model.get_mixin("classification_head")
    model.del_mixin("classification_head")
    model.add_mixin("hidden_states", HiddenStates())
    hidden = model(IDS, POSITIONS, None, token_type_ids=torch.zeros_like(IDS))[0]  # [b, s, 32]
    first, second = head.layers
    expected = F.linear(F.relu(F.linear(hidden, first.weight, first.bias)), second.weight, second.bias)
    assert torch.equal(head.final_forward(hidden), expected)
    assert expected.shape == (4, 10, 2)


def test_head_trains_and_reloads(tmp_path):
    model = classifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(class_logits(model), LABELS)
        optimizer.zero_grad()
        loss.backward()
        assert model.get_mixin("classification_head").layers[0].weight.grad.abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 2

    model.eval()
    save_checkpoint(1, model, None, None, argparse.Namespace(**{**vars(ARGS), "save": str(tmp_path)}))
    # As users of the original do: build the pretrained model, swap in the head, load the finetuned weights.
    reloaded, args = AutoModel.from_pretrained(str(tmp_path), build_only=True)
    reloaded.del_mixin("bert-final")
    reloaded.add_mixin("classification_head", MLPHeadMixin(32, 16, 2))
    load_checkpoint(reloaded, args, load_path=str(tmp_path))
    assert torch.equal(class_logits(reloaded), class_logits(model))


def test_needs_an_output_size():
    with pytest.raises(ValueError, match="output size"):
        MLPHeadMixin(32)
