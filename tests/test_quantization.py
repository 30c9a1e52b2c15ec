"""sat.quantization: 8- and 4-bit weight-only quantization of the parallel linear layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from distributed import run_workers

from sat import mpu
from sat.model import BaseModel
from sat.model.official import T5Model
from sat.mpu.reshard import partition_specs
from sat.quantization import QuantizedColumnParallelLinear, QuantizedLinear, QuantizedRowParallelLinear, quantize
from sat.quantization.packing import dequantize_weight, pack_int4, quantize_weight, unpack_int4

IDS = torch.randint(0, 96, (2, 10), generator=torch.Generator().manual_seed(0))
POSITIONS = torch.arange(10).expand(2, 10)
TINY = dict(
    num_layers=2,
    hidden_size=32,
    num_attention_heads=4,
    vocab_size=96,
    max_sequence_length=32,
    hidden_dropout=0.0,
    attention_dropout=0.0,
)


def _tiny(**overrides) -> BaseModel:
    torch.manual_seed(0)
    return BaseModel(BaseModel.get_args(**{**TINY, **overrides})).eval()


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS, POSITIONS, -1)[0]


def _bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def test_int4_packing_round_trips_every_level():
    q = torch.arange(-8, 8, dtype=torch.int8).repeat(3, 2)  # [3, 32], every 4-bit value at both nibbles
    packed = pack_int4(q)
    assert packed.dtype == torch.int8 and packed.shape == (3, 16)
    assert torch.equal(unpack_int4(packed), q)
    with pytest.raises(ValueError, match="odd"):
        pack_int4(q[:, :3])


@pytest.mark.parametrize("bits, level", [(8, 127), (4, 7)])
def test_quantized_weight_is_within_half_a_step(bits, level):
    weight = torch.randn(6, 16, generator=torch.Generator().manual_seed(0))
    weight[2] = 0.0  # an all-zero row: scale 1, not a division by zero
    scale = weight.abs().amax(-1) / level
    scale[2] = 1.0
    q = quantize_weight(weight, scale, bits)
    assert q.shape == (6, 16 * bits // 8)
    dense = dequantize_weight(q, scale, bits, torch.float32)
    assert ((dense - weight).abs() <= scale[:, None] / 2 + 1e-7).all()
    assert torch.equal(dense[2], torch.zeros(16))


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_layers_equal_the_dequantized_reference(bits):
    torch.manual_seed(0)
    column = mpu.ColumnParallelLinear(32, 48, gather_output=True, stride=3)
    row = mpu.RowParallelLinear(48, 32)
    with torch.no_grad():
        row.bias.normal_()
    float_column, float_row = column.weight.detach().clone(), row.weight.detach().clone()
    model = torch.nn.Sequential(column, row)
    quantize(model, bits)
    assert type(column) is QuantizedColumnParallelLinear and type(row) is QuantizedRowParallelLinear
    assert column.stride == 3 and column.gather_output and column.weight.dtype == torch.int8
    x = torch.randn(2, 80, 32, generator=torch.Generator().manual_seed(1))  # 160 rows: F.linear's route
    hidden = column(x)
    expected_hidden = F.linear(x, column.dequantized_weight(torch.float32), column.bias)
    assert torch.equal(hidden, expected_hidden)
    assert torch.equal(row(hidden), F.linear(hidden, row.dequantized_weight(torch.float32), row.bias))
    # Close to the float layer: each weight is off by at most scale / 2, so each output by at
    # most sum_j |x_j| * scale / 2.
    bound = x.abs().sum(-1, keepdim=True) * column.weight_scale / 2
    assert ((hidden - F.linear(x, float_column, column.bias)).abs() <= bound + 1e-5).all()
    assert (float_row - row.dequantized_weight(torch.float32)).abs().max() <= row.weight_scale.max() / 2


@pytest.mark.parametrize("bits, at_most", [(8, 0.02), (4, 0.2)])
def test_quantized_model_is_close_to_the_float_model(bits, at_most):
    model = _tiny()
    reference = _logits(model)
    quantize(model, bits)
    layer = model.transformer.layers[0]
    assert isinstance(layer.attention.query_key_value, QuantizedColumnParallelLinear)
    assert isinstance(layer.mlp.dense_4h_to_h, QuantizedRowParallelLinear)
    assert type(model.transformer.word_embeddings) is mpu.VocabParallelEmbedding  # embeddings stay as they are
    difference = (_logits(model) - reference).abs().max().item()
    print(f"\n{bits}-bit tiny BaseModel: max |logit difference| = {difference:.4f} (logits std {reference.std():.3f})")
    assert 0 < difference < at_most


@pytest.mark.parametrize("bits, ratio_at_most", [(8, 0.51), (4, 0.26)])
def test_resident_weight_memory_of_fp16_linears(bits, ratio_at_most):
    torch.manual_seed(0)
    layers = torch.nn.ModuleList(
        [
            mpu.ColumnParallelLinear(512, 1536, params_dtype=torch.half),
            mpu.RowParallelLinear(512, 512, params_dtype=torch.half),
        ]
    )
    fp16 = _bytes(layers)
    quantize(layers, bits)
    ratio = _bytes(layers) / fp16
    print(f"\n{bits}-bit: {_bytes(layers)} bytes vs fp16 {fp16} bytes (weights, scales, biases): ratio {ratio:.4f}")
    assert ratio <= ratio_at_most
    assert all(layer.weight_scale.dtype == torch.half for layer in layers)
    x = torch.randn(3, 512, dtype=torch.half)
    assert layers[1](layers[0](x)[:, :512]).dtype == torch.half


def test_quantized_state_dict_keeps_the_partition_specs():
    model = quantize(_tiny(), 4)
    specs = partition_specs(model)
    prefix = "transformer.layers.0."
    assert specs[prefix + "attention.query_key_value.weight"] == (0, 3)
    assert specs[prefix + "attention.query_key_value.weight_scale"] == (0, 3)
    assert specs[prefix + "attention.dense.weight"] == (1, 1)
    assert specs[prefix + "attention.dense.weight_scale"] is None
    assert model.state_dict()[prefix + "attention.dense.weight"].shape == (32, 16)  # [out, in / 2]


def test_quantize_checks_before_changing_anything():
    model = _tiny()
    with pytest.raises(ValueError, match="one of"):
        quantize(model, 3)
    with pytest.raises(ValueError, match="meta"):
        quantize(mpu.ColumnParallelLinear(8, 8, device="meta"), 8)
    assert all(not isinstance(m, QuantizedColumnParallelLinear) for m in model.modules())
    with pytest.raises(NotImplementedError, match="split the float model"):
        quantize(model, 8).transformer.layers[0].attention.dense.repartition()


def test_quantized_linear_keeps_the_originals_signature():
    torch.manual_seed(0)
    dense = torch.nn.Linear(16, 8)
    layer = QuantizedLinear(8, dense.weight.detach(), dense.bias.detach(), in_features=16, out_features=8)
    x = torch.randn(4, 16, requires_grad=True)
    dequantized = layer.dequantized_weight(torch.float32)
    assert torch.equal(layer(x), F.linear(x, dequantized, dense.bias))
    assert (layer(x) - dense(x)).abs().max() < 0.02
    # Frozen weights, but gradients reach the input (finetuning adapters on a quantized model).
    (grad,) = torch.autograd.grad(layer(x).sum(), x)
    assert torch.allclose(grad, dequantized.sum(0).expand(4, 16)) and not layer.weight.requires_grad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_quantized_model_on_cuda_in_half():
    model = _tiny().cuda().half()
    with torch.no_grad():
        reference = model(IDS.cuda(), POSITIONS.cuda(), -1)[0]
        quantize(model, 4)
        logits = model(IDS.cuda(), POSITIONS.cuda(), -1)[0]
    layer = model.transformer.layers[0].attention.query_key_value
    assert layer.weight.is_cuda and layer.weight.dtype == torch.int8 and logits.dtype == torch.half
    assert (logits - reference).abs().max() < 0.2


def _mp2_worker(rank: int, world: int) -> dict:
    model = _tiny()  # the full model on every rank, split in place, then quantized
    mpu.mp_split_model(model, world)
    quantize(model, 4)
    dense = model.transformer.layers[0].attention.dense
    return {"logits": _logits(model), "row scale": dense.weight_scale.detach(), "row shard": dense.weight.shape}


@pytest.mark.multiprocess
def test_quantized_mp2_model_equals_the_quantized_mp1_model():
    model = quantize(_tiny(), 4)
    logits = _logits(model)
    scale = model.transformer.layers[0].attention.dense.weight_scale
    for result in run_workers(_mp2_worker, 2):
        assert result["row shard"] == (32, 8)  # [out, in / 2 ranks / 2 per byte]
        assert torch.equal(result["row scale"], scale)  # taken over the whole row
        assert (result["logits"] - logits).abs().max() < 1e-5


def test_quantized_own_lm_head_of_t5_v1_1():
    torch.manual_seed(0)
    args = T5Model.get_args(**TINY, gated_gelu_mlp=True, no_share_embeddings=True, relative_attention_num_buckets=8)
    model = T5Model(args).eval()
    with torch.no_grad():
        reference = model(IDS, IDS.flip(1))[1]
        quantize(model, 8)
        logits = model(IDS, IDS.flip(1))[1]
    assert isinstance(model.decoder.mixins["t5-final"].lm_head, QuantizedColumnParallelLinear)
    assert 0 < (logits - reference).abs().max() < 0.05
