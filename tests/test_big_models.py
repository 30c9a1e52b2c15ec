"""Big models on one machine: the load dtype, device_map placement (CPU, disk, GPU), from_hf."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from sat.checkpoint import conversion
from sat.generation.autoregressive_sampling import filling_sequence
from sat.generation.sampling_strategies import BaseStrategy
from sat.hf import from_hf
from sat.model import AutoModel, GPT2Model
from sat.model.finetune.lora2 import LoraMixin
from sat.model.mixins import CachedAutoregressiveMixin
from sat.model.position_embedding.rotary import RotaryEmbedding
from sat.training.model_io import save_checkpoint
from tests.conftest import TINY

LAYERS = 4
PROMPT = torch.tensor([3, 17, 42, 99, 7, 61])


class LoraGPT2(GPT2Model):
    """GPT-2 with LoRA inside every layer (parameters under ``transformer.layers.N``)."""

    def __init__(self, args, transformer=None, **kwargs):
        super().__init__(args, transformer=transformer, **kwargs)
        self.add_mixin("lora", LoraMixin(args.num_layers, r=2), reinit=True)


def _save(model, args, folder) -> str:
    args.save = str(folder)
    save_checkpoint(1, model, None, None, args)
    return str(folder)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 4-layer fp32 GPT-2 checkpoint (weights sharpened so greedy tokens vary), the model, and its file's state."""
    torch.manual_seed(1)
    args = GPT2Model.get_args(**{**TINY, "num_layers": LAYERS})
    model = GPT2Model(args).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(4.0)
    folder = _save(model, args, tmp_path_factory.mktemp("gpt2"))
    state = torch.load(os.path.join(folder, "1", "mp_rank_00_model_states.pt"), weights_only=True)["module"]
    return folder, model, state


def _logits(model):
    ids = PROMPT[None]  # [1, s]
    positions = torch.arange(len(PROMPT))[None]
    with torch.no_grad():
        return model(ids, positions, -1)[0]


def _greedy(model):
    model.add_mixin("auto-regressive", CachedAutoregressiveMixin())
    seq = torch.cat((PROMPT, torch.full((8,), -1)))
    tokens, _ = filling_sequence(model, seq, 1, BaseStrategy(top_k=1))
    model.del_mixin("auto-regressive")
    return tokens


def _sizes(model) -> tuple[int, int]:
    """(bytes outside the layers, bytes of one layer)."""
    layer = sum(t.numel() * t.element_size() for t in model.transformer.layers[0].state_dict().values())
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return total - LAYERS * layer, layer


@pytest.mark.parametrize(
    "dtype, expected",
    [(None, torch.float32), ("auto", torch.float32), (torch.bfloat16, torch.bfloat16), ("fp16", torch.float16)],
)
def test_dtype_loads_each_tensor_converted_bitwise(checkpoint, dtype, expected):
    folder, _, state = checkpoint
    model, args = AutoModel.from_pretrained(folder, dtype=dtype)
    loaded = model.state_dict()
    assert {value.dtype for value in loaded.values() if value.is_floating_point()} == {expected}
    for key, value in state.items():
        assert torch.equal(loaded[key], value.to(expected)), key
    assert getattr(args, "bf16", False) == (expected == torch.bfloat16)


def test_auto_dtype_keeps_a_bf16_checkpoint(tmp_path, checkpoint):
    _, model, _ = checkpoint
    half = GPT2Model(GPT2Model.get_args(**{**TINY, "num_layers": LAYERS})).eval()
    half.load_state_dict(model.state_dict())
    half.to(torch.bfloat16)
    folder = _save(half, GPT2Model.get_args(**{**TINY, "num_layers": LAYERS}), tmp_path)
    loaded, args = AutoModel.from_pretrained(folder, dtype="auto")
    assert next(loaded.parameters()).dtype == torch.bfloat16 and args.bf16
    assert torch.equal(_logits(loaded), _logits(half))


@pytest.mark.parametrize("bad", ["int8", torch.int64, 16, "fp8"])
def test_bad_dtype_is_a_value_error_naming_it(checkpoint, bad):
    with pytest.raises(ValueError, match=r"dtype=.*is not a dtype to load in"):
        AutoModel.from_pretrained(checkpoint[0], dtype=bad)


def test_chunked_conversion_of_a_memory_mapped_tensor_is_bitwise(tmp_path, monkeypatch):
    monkeypatch.setattr(conversion, "_CHUNK_BYTES", 4096 * 3 + 4)  # chunks not page-aligned
    torch.save({"w": torch.randn(257, 300)}, tmp_path / "w.pt")
    source = torch.load(tmp_path / "w.pt", mmap=True, weights_only=True)["w"]
    converted = conversion.convert_tensor(source, torch.bfloat16, torch.device("cpu"))
    assert torch.equal(converted, source.to(torch.bfloat16))
    assert torch.equal(source, torch.load(tmp_path / "w.pt", weights_only=True)["w"])  # paged-out pages read back
    assert conversion.convert_tensor(source, torch.float32, torch.device("cpu")) is source
    transposed = conversion.convert_tensor(source.t(), torch.bfloat16, torch.device("cpu"))  # an HF Conv1D weight
    assert torch.equal(transposed, source.t().to(torch.bfloat16)) and transposed.stride() == (1, 300)


def test_device_map_all_on_cpu(checkpoint):
    folder, model, _ = checkpoint
    placed, _ = AutoModel.from_pretrained(folder, device_map={"": "cpu"})
    assert set(placed.device_map.values()) == {"cpu"}
    assert {name for name in placed.device_map if "layers" in name} == {f"transformer.layers.{i}" for i in range(4)}
    assert torch.equal(_logits(placed), _logits(model))


def test_device_map_auto_offloads_layers_to_disk_with_equal_outputs(tmp_path, checkpoint):
    folder, model, _ = checkpoint
    trunk, layer = _sizes(model)
    # The trunk, room to load one offloaded layer, and one layer resident: the other three on disk.
    budget = trunk + 2 * layer + layer // 2
    placed, _ = AutoModel.from_pretrained(
        folder, device_map="auto", max_memory={"cpu": budget}, offload_folder=str(tmp_path / "offload")
    )
    disk = sorted(name for name, device in placed.device_map.items() if device == "disk")
    assert disk == ["transformer.layers.1", "transformer.layers.2", "transformer.layers.3"]
    assert placed.device_map["transformer.layers.0"] == "cpu"
    assert placed.device_map["transformer.word_embeddings"] == "cpu"
    assert os.path.isfile(tmp_path / "offload" / "transformer.layers.3.mlp.dense_h_to_4h.weight.dat")
    assert placed.transformer.layers[3].mlp.dense_h_to_4h.weight.is_meta  # loaded on use only
    assert torch.equal(_logits(placed), _logits(model))
    expected = _greedy(model)
    assert expected[0, len(PROMPT) :].unique().numel() > 1  # a test of something
    assert torch.equal(_greedy(placed), expected)


def test_disk_without_offload_folder_names_it(checkpoint):
    folder, model, _ = checkpoint
    trunk, layer = _sizes(model)
    with pytest.raises(ValueError, match="offload_folder"):
        AutoModel.from_pretrained(folder, device_map="auto", max_memory={"cpu": trunk + 2 * layer})
    with pytest.raises(ValueError, match="offload_folder"):
        AutoModel.from_pretrained(folder, device_map={"transformer.layers.1": "disk", "": "cpu"})


@pytest.mark.parametrize(
    "device_map, message",
    [
        ({"transformer.layers.0.attention": "cpu", "": "cpu"}, "inside layer transformer.layers.0"),
        ({"transformer.nothing": "cpu", "": "cpu"}, "'transformer.nothing', which is not a module"),
        ({"transformer.layers": "cpu"}, r"no device for \[.*'transformer.word_embeddings'"),
        ({"transformer.final_layernorm": "disk", "": "cpu"}, "splits the modules outside the layers"),
        ({"": "disk"}, "stay on a GPU or the CPU"),
        ({"": "tpu"}, "use a GPU index, 'cpu' or 'disk'"),
        ({"": 0} if not torch.cuda.is_available() else {"": 99}, "GPUs"),
        ("everywhere", "device_map='everywhere'"),
    ],
)
def test_bad_device_maps_are_value_errors(checkpoint, device_map, message):
    with pytest.raises(ValueError, match=message):
        AutoModel.from_pretrained(checkpoint[0], device_map=device_map)


def test_lora_inside_offloaded_layers(tmp_path):
    torch.manual_seed(2)
    args = LoraGPT2.get_args(**{**TINY, "num_layers": LAYERS})
    model = LoraGPT2(args).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "matrix_" in name:
                param.normal_()  # adapters start at zero: make them count
    folder = _save(model, args, tmp_path / "lora")
    placed, _ = LoraGPT2.from_pretrained(
        folder, device_map={"transformer.layers.2": "disk", "transformer.layers.3": "disk", "": "cpu"},
        offload_folder=str(tmp_path / "offload"),
    )  # fmt: skip
    offloaded = [name for name in os.listdir(tmp_path / "offload") if ".matrix_A." in name]
    assert any(name.startswith("transformer.layers.3.") for name in offloaded)
    assert torch.equal(_logits(placed), _logits(model))


def _save_tiny_llama(folder, layers: int, seed: int) -> str:
    """A random tiny LLaMA saved as a transformers directory at ``folder``."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        num_hidden_layers=layers, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=100, max_position_embeddings=64,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    return str(folder)


def test_from_hf_with_dtype_and_device_map(tmp_path):
    _save_tiny_llama(tmp_path / "hf", layers=3, seed=3)
    reference, _ = from_hf(str(tmp_path / "hf"), dtype=torch.bfloat16)
    assert {p.dtype for p in reference.parameters()} == {torch.bfloat16}
    device_map = {"transformer.layers.1": "disk", "transformer.layers.2": "disk", "": "cpu"}
    for load in (from_hf, AutoModel.from_pretrained):
        offload = str(tmp_path / f"offload-{load.__name__}")
        placed, args = load(str(tmp_path / "hf"), dtype="bf16", device_map=device_map, offload_folder=offload)
        assert args.bf16 and placed.device_map["transformer.layers.2"] == "disk"
        assert torch.equal(_logits(placed), _logits(reference))


def test_from_hf_auto_dtype_is_the_weights_own(tmp_path):
    torch.manual_seed(4)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=64)).to(
        torch.float16
    ).save_pretrained(tmp_path / "hf")
    model, args = from_hf(str(tmp_path / "hf"), dtype="auto")
    assert {p.dtype for p in model.parameters()} == {torch.float16} and args.fp16


@pytest.mark.gpu
def test_layers_split_between_gpu_and_cpu_generate_the_same_tokens(checkpoint):
    folder, _, _ = checkpoint
    on_gpu, _ = AutoModel.from_pretrained(folder, device_map={"": 0})
    split, _ = AutoModel.from_pretrained(
        folder, device_map={"transformer.layers.2": "cpu", "transformer.layers.3": "cpu", "": 0}
    )
    assert split.device_map["transformer.layers.3"] == "cpu" and split.device_map["transformer.layers.0"] == 0
    assert split.transformer.layers[0].mlp.dense_h_to_4h.weight.device == torch.device("cuda", 0)
    assert torch.equal(_greedy(split), _greedy(on_gpu))


def test_rotary_tables_are_made_on_the_calling_layers_device():
    """A layer placed on another device than the trunk (a device_map over several GPUs) calls
    the trunk's rotary embedding with its own tensors: the tables come back on that device, and
    each device keeps its own cached copy. ``meta`` stands in for a second device on CPU."""
    rotary = RotaryEmbedding(8)
    positions = torch.arange(5)[None]  # [1, s]
    on_cpu = rotary.cos_sin(positions, torch.float32)
    elsewhere = rotary.cos_sin(positions.to("meta"), torch.float32)
    assert on_cpu[0].device.type == "cpu" and elsewhere[0].device.type == "meta"
    assert elsewhere[0].shape == on_cpu[0].shape == (1, 1, 5, 8)
    assert rotary.cos_sin(positions, torch.float32)[0] is on_cpu[0]  # the CPU copy is still cached


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_rotary_model_split_over_two_gpus_generates_the_same_tokens(tmp_path):
    folder = _save_tiny_llama(tmp_path / "hf", layers=4, seed=5)
    on_one, _ = from_hf(folder, device_map={"": 0})
    split, _ = from_hf(folder, device_map={"transformer.layers.2": 1, "transformer.layers.3": 1, "": 0})
    assert split.transformer.layers[3].mlp.dense_h_to_4h.weight.device == torch.device("cuda", 1)
    assert torch.equal(_greedy(split), _greedy(on_one))
