"""Names the original's examples and tests import, used the way they use them, through public
paths only: SDPA attention mixins, position helpers, lora2's functions, the zoo's mixins,
sat.model's re-exports and the inference-script helpers."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from PIL import Image

from sat.generation.utils import generate_continually, save_multiple_images, timed_name
from sat.model import BaseMixin, BaseModel, CachedAutoregressiveModel, EncoderDecoderModel
from sat.model.finetune.lora2 import merge_linear_lora, replace_linear_with_lora
from sat.model.mixins import MemoryEfficientAttentionMixin, TransposedMemoryEfficientAttentionMixin
from sat.model.official.bert_model import BertModel
from sat.model.official.llama_model import LLaMAMlpMixin, RotaryMixin
from sat.model.position_embedding import get_2d_sincos_pos_embed
from sat.model.position_embedding.triton_rotary_embeddings import FastRotaryEmbedding

TINY = dict(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=60, max_sequence_length=64)


def rotate_half(x):  # the reference helpers of the original's rotary test
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=x.ndim - 1)


def apply_rotary_pos_emb_index_bhs(q, k, cos, sin, position_id):
    cos = F.embedding(position_id, cos.squeeze(1)).unsqueeze(1)
    sin = F.embedding(position_id, sin.squeeze(1)).unsqueeze(1)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


def test_mea_mixin_as_tests_test_mea():
    with torch.no_grad():
        model = BaseModel(args=BaseModel.get_args(**TINY)).eval()
        x = torch.tensor([range(40)])
        a = model(input_ids=x, position_ids=x, attention_mask=None)
        model.add_mixin("mea", TransposedMemoryEfficientAttentionMixin())
        b = model(input_ids=x, position_ids=x, attention_mask=None)
    assert ((a[0] - b[0]).abs() / a[0].abs().mean()).max() < 1e-5
    model.del_mixin("mea")
    with torch.no_grad():
        causal = model(x, x, -1)[0]
        model.add_mixin("mea", MemoryEfficientAttentionMixin())
        torch.testing.assert_close(model(x, x, -1)[0], causal, atol=1e-5, rtol=1e-5)


def test_fast_rotary_as_tests_test_triton_rotary_embedding():
    torch.manual_seed(0)
    batch_size, nheads, seqlen, headdim, max_seqlen = 2, 4, 16, 32, 64
    query = torch.randn(batch_size, nheads, seqlen, headdim)
    key = torch.randn(batch_size, nheads, seqlen, headdim)
    position_ids = torch.randint(0, max_seqlen, (batch_size, seqlen))
    inv_freq = 1.0 / (10000 ** (torch.arange(0, headdim, 2).float() / headdim))
    freqs = torch.einsum("i,j->ij", torch.arange(max_seqlen).float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
    q, k = apply_rotary_pos_emb_index_bhs(query, key, emb.cos(), emb.sin(), position_ids)
    rotary_emb_llama = FastRotaryEmbedding(dim=headdim, device="cpu")
    q_l, k_l = rotary_emb_llama(query, key, position_ids, max_seqlen=max_seqlen)
    assert (q_l - q).abs().max().item() < 1e-5 and (k_l - k).abs().max().item() < 1e-5


def test_sincos_as_examples_mae():
    pos_embed = torch.nn.Parameter(torch.zeros(1, 1 + 4 * 4, 32), requires_grad=False)
    table = get_2d_sincos_pos_embed(pos_embed.shape[-1], (4, 4), 1, 0)
    pos_embed.data.copy_(torch.from_numpy(table).float().unsqueeze(0))
    assert pos_embed[0, 0].abs().sum() == 0  # the class token's row
    assert pos_embed[0, 1, 16:].tolist() == [0.0] * 8 + [1.0] * 8  # patch (0, 0), its row's sin and cos


def test_bert_head_as_examples_bert_transform_param():
    model = BertModel(BertModel.get_args(**TINY, layernorm_order="post"))
    head = model.mixins["bert-final"].lm_head
    assert head.dense.weight.shape == (32, 32)
    assert head.layer_norm.weight.shape == (32,)
    assert head.decoder.weight.shape == (60, 32)


def test_llama_built_from_mixins_as_the_original_llama_model():
    class NoPosition(BaseMixin):
        def position_embedding_forward(self, position_ids, output_cross_layer, **kw_args):
            return None

    args = BaseModel.get_args(**TINY)
    model = BaseModel(args, activation_func=F.silu).eval()
    model.add_mixin("position", NoPosition())
    model.add_mixin("rotary", RotaryMixin(args.hidden_size, args.num_attention_heads))
    model.add_mixin("mlp", LLaMAMlpMixin(args.num_layers, args.hidden_size, None))
    ids = torch.randint(0, 60, (1, 8))
    with torch.no_grad():
        logits = model(ids, torch.arange(8)[None], -1)[0]
        shifted = model(ids, torch.arange(8)[None] + 5, -1)[0]
        last_moved = model(ids, torch.tensor([[0, 1, 2, 3, 4, 5, 6, 20]]), -1)[0]
    assert logits.shape == (1, 8, 60)
    torch.testing.assert_close(shifted, logits, atol=1e-5, rtol=1e-5)  # RoPE sees relative positions only
    assert (last_moved[0, -1] - logits[0, -1]).abs().max() > 1e-5  # small weights: attention near uniform
    torch.testing.assert_close(last_moved[0, :-1], logits[0, :-1], atol=1e-5, rtol=1e-5)
    assert "mixins.mlp.gate_proj.0.weight" in model.state_dict()


def test_lora2_functions_on_a_model_layer():
    model = BaseModel(BaseModel.get_args(**TINY)).eval()
    attention = model.transformer.layers[0].attention
    attention.query_key_value = replace_linear_with_lora(attention.query_key_value, 3, 4, 1.0, 0.0)
    assert "transformer.layers.0.attention.query_key_value.matrix_A.2" in model.state_dict()
    attention.query_key_value = merge_linear_lora(attention.query_key_value)
    assert "transformer.layers.0.attention.query_key_value.weight" in model.state_dict()


def test_sat_model_exports():
    model = CachedAutoregressiveModel(BaseModel.get_args(**TINY))
    assert "auto-regressive" in model.mixins
    assert isinstance(EncoderDecoderModel, type)


def test_inference_script_helpers_as_examples_cogview(tmp_path):
    prompts = tmp_path / "input.txt"
    prompts.write_text("a cat\na dog\n", encoding="utf-8")

    def process(raw_text):
        imgs = [torch.rand(2, 3, 8, 8)]
        full_path = timed_name(raw_text.replace(" ", "_"), ".jpg", str(tmp_path))
        save_multiple_images(imgs, full_path, True)

    generate_continually(process, str(prompts))
    saved = sorted(name for name in os.listdir(tmp_path) if name.endswith(".jpg"))
    assert [name.split("-")[0] for name in saved] == ["a_cat", "a_dog"]
    assert Image.open(tmp_path / saved[0]).size == (22, 12)


def test_names_older_releases_exported_from_sat():
    import sat
    from sat.runtime import initialize_distributed, set_random_seed
    from sat.training.model_io import load_checkpoint

    exported = (sat.load_checkpoint, sat.initialize_distributed, sat.set_random_seed)  # examples/t5, examples/glm
    assert exported == (load_checkpoint, initialize_distributed, set_random_seed)


class ClassificationModel(BertModel):
    """The original's finetune examples subclass without ``**kwargs``: no ``params_dtype``."""

    def __init__(self, args, transformer=None):
        super().__init__(args, transformer=transformer)


def test_subclass_without_params_dtype_builds_in_the_asked_dtype():
    from sat.model import get_model

    args = BertModel.get_args(**TINY, bf16=True)
    model = get_model(args, ClassificationModel)  # the original raised TypeError: unexpected 'params_dtype'
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_model_built_from_the_common_arguments_takes_its_own_defaults():
    from sat import get_args
    from sat.model import RobertaModel

    # The original's roberta finetune examples: get_args without the model's argument group.
    common = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--vocab-size", "60"]
    args = get_args(common)
    assert not hasattr(args, "num_types")
    RobertaModel(args)
    assert args.num_types == RobertaModel.get_args().num_types == 2
    args = get_args(common)
    model = BertModel(args)
    assert args.num_types == 2 and model.get_mixin("bert-type").type_embeddings.num_embeddings == 2
    args = get_args(common)
    args.num_types = 3  # a value the script set is kept
    assert BertModel(args).get_mixin("bert-type").type_embeddings.num_embeddings == 3
