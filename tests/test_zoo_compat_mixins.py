"""The original's zoo mixins on a plain model: RotaryMixin, LLaMAMlpMixin and
T5GatedGeluMLPMixin compute what the backbone's built-in rotary and gated MLP compute;
``bert_model.lm_head`` is BERT's masked-LM head."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sat.model import BaseMixin, BaseModel
from sat.model.mixins import CachedAutoregressiveMixin
from sat.model.official.bert_model import BertLMHead, lm_head
from sat.model.official.llama_model import LLaMAMlpMixin, RotaryMixin
from sat.model.official.t5_model import T5GatedGeluMLPMixin
from sat.mpu.utils import gelu

TINY = dict(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=50, max_sequence_length=32)


class NoAbsolutePositions(BaseMixin):
    def position_embedding_forward(self, position_ids, output_cross_layer, **kw_args):
        return None


def _pair(plain_kw: dict, builtin_kw: dict) -> tuple[BaseModel, BaseModel]:
    torch.manual_seed(0)
    plain = BaseModel(BaseModel.get_args(**TINY), **plain_kw).eval()
    torch.manual_seed(1)
    builtin = BaseModel(BaseModel.get_args(**TINY), **builtin_kw).eval()
    return plain, builtin


def _same_logits(a: BaseModel, b: BaseModel) -> None:
    ids = torch.randint(0, 50, (2, 6))
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [3, 4, 5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(a(ids, positions, -1)[0], b(ids, positions, -1)[0], atol=1e-5, rtol=1e-5)


def _shared_weights(source: BaseModel, target: BaseModel) -> None:
    own = target.state_dict()
    target.load_state_dict({k: v for k, v in source.state_dict().items() if k in own}, strict=False)


def test_rotary_mixin_equals_the_builtin_rotary():
    plain, builtin = _pair({}, {"is_rotary_emb": True})
    plain.add_mixin("no-position", NoAbsolutePositions())
    plain.add_mixin("rotary", RotaryMixin(32, 4))
    _shared_weights(builtin, plain)
    _same_logits(plain, builtin)
    assert "mixins.rotary.rotary_emb.inv_freq" in plain.state_dict()


def test_llama_mlp_mixin_equals_the_builtin_gated_mlp():
    plain, builtin = _pair({"activation_func": F.silu}, {"is_gated_mlp": True, "activation_func": F.silu})
    plain.add_mixin("mlp", LLaMAMlpMixin(2, 32, None))
    _shared_weights(builtin, plain)
    for i, gate in enumerate(plain.get_mixin("mlp").gate_proj):
        gate.weight.data.copy_(builtin.transformer.layers[i].mlp.dense_h_to_4h_gate.weight)
    _same_logits(plain, builtin)


def test_t5_gated_gelu_mixin_equals_the_builtin_gated_mlp():
    # The backbone activates dense_h_to_4h_gate; T5's mixin activates dense_h_to_4h.
    plain, builtin = _pair({}, {"is_gated_mlp": True, "activation_func": gelu})
    mixin = T5GatedGeluMLPMixin(2, 32, bias=False, init_method_std=1.0)
    plain.add_mixin("gated-mlp", mixin)
    assert abs(mixin.gated_h_to_4h_list[0].weight.std().item() - 32**-0.5) < 0.02
    _shared_weights(builtin, plain)
    for i, linear in enumerate(mixin.gated_h_to_4h_list):
        mlp = builtin.transformer.layers[i].mlp
        linear.weight.data.copy_(mlp.dense_h_to_4h.weight)
        plain.transformer.layers[i].mlp.dense_h_to_4h.weight.data.copy_(mlp.dense_h_to_4h_gate.weight)
        plain.transformer.layers[i].mlp.dense_h_to_4h.bias.data.zero_()
    _same_logits(plain, builtin)


def test_bert_lm_head():
    assert lm_head is BertLMHead
    torch.manual_seed(0)
    head = lm_head(50, 32)
    x = torch.randn(2, 3, 32)
    expected = head.decoder(F.layer_norm(F.gelu(head.dense(x)), (32,), eps=1e-5))
    assert head(x).shape == (2, 3, 50)
    torch.testing.assert_close(head(x), expected)


def test_rotary_mixin_rotates_before_the_kv_cache():
    plain, _ = _pair({}, {})
    plain.add_mixin("rotary", RotaryMixin(32, 4))
    plain.add_mixin("auto-regressive", CachedAutoregressiveMixin())
    with torch.no_grad():
        for param in plain.parameters():
            param.mul_(8.0)  # sharper attention, so a wrong rotation would show
        ids = torch.randint(0, 50, (1, 7))
        positions = torch.arange(7)[None]
        full = plain(ids, positions, -1)[0]
        prefix = plain(ids[:, :5], positions[:, :5], -1)
        mems = [layer["mem_kv"] for layer in prefix[1:]]
        step = plain(ids[:, 5:], positions[:, 5:], -1, mems=mems)[0]
    torch.testing.assert_close(step, full[:, 5:], atol=1e-4, rtol=1e-4)
