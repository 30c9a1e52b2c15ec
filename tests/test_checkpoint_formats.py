"""Checkpoint formats: sat checkpoints as ``.pt`` or sharded safetensors (round trips, tied
weights, non-tensor entries, training resume, resharding online and offline, damaged files), and
HF directories written (``save_hf``) and read (``from_hf``) shard by shard."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from page_cache import cached_pages, dropped_from_page_cache
from safetensors import safe_open
from test_training import ARGV, launch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from sat.checkpoint import CheckpointError, SafetensorsState, parse_size, read_checkpoint_file, rng_states
from sat.checkpoint.manifest import verify_directory
from sat.checkpoint.recovery import choose_resume_iteration
from sat.checkpoint.writing import write_model_states
from sat.hf import from_hf, read_hf_weights, save_hf
from sat.model import AutoModel, BaseMixin, BaseModel
from sat.ops import FusedEmaAdam
from sat.tools.reshard import main as reshard_main
from sat.training.model_io import save_checkpoint

IDS = torch.randint(0, 100, (2, 10), generator=torch.Generator().manual_seed(0))
POSITIONS = torch.arange(10).expand(2, 10)
STEM = "mp_rank_00_model_states"


def _save(model, args, folder: str, checkpoint_format: str = "safetensors", max_shard_size="20KB") -> str:
    args.save, args.checkpoint_format, args.max_shard_size = folder, checkpoint_format, max_shard_size
    save_checkpoint(1, model, None, None, args)
    return folder


def _assert_same_state(got: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = got.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key


def _without_manifest(iteration_dir: str) -> None:
    """Remove the manifest, if any: the damaged file itself must be what the reader notices."""
    manifest = os.path.join(iteration_dir, "manifest.json")
    if os.path.exists(manifest):
        os.remove(manifest)


@pytest.mark.parametrize(
    "size, expected",
    [(1000, 1000), ("1000", 1000), ("500MB", 500 * 10**6), ("2GiB", 2 * 2**30), ("5GB", 5 * 10**9), ("8Kb", 1000)],
)
def test_parse_size_reads_transformers_units(size, expected):
    assert parse_size(size) == expected


@pytest.mark.parametrize("size", ["5 gigs", "-3", 0, "GB"])
def test_parse_size_rejects_nonsense(size):
    with pytest.raises(ValueError, match="max_shard_size"):
        parse_size(size)


def test_sharded_safetensors_round_trip_is_bitwise(tmp_path, tiny_args):
    args = tiny_args(vocab_size=128)
    model = BaseModel(args).eval()
    expected = {key: value.clone() for key, value in model.state_dict().items()}
    folder = _save(model, args, str(tmp_path / "ckpt"))
    files = sorted(n for n in os.listdir(tmp_path / "ckpt" / "1") if n.startswith("mp_rank"))
    # 20 KB shards of a 0.13 MB model; the 16 KB embedding alone fills one.
    shards = [n for n in files if n.endswith(".safetensors")]
    assert len(shards) >= 5 and shards[0] == f"{STEM}-00001-of-{len(shards):05d}.safetensors"
    assert files == sorted([*shards, f"{STEM}.safetensors.index.json"])  # no .pt, no .extra.pt for weights only
    index = json.loads((tmp_path / "ckpt" / "1" / f"{STEM}.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(expected) and set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in expected.values())
    for shard in shards:  # plain safetensors files: the library itself reads them
        with safe_open(str(tmp_path / "ckpt" / "1" / shard), "pt") as f:
            assert f.metadata() == {"format": "pt"}
            for key in f.keys():
                assert index["weight_map"][key] == shard and torch.equal(f.get_tensor(key), expected[key])

    state = read_checkpoint_file(os.path.join(folder, "1", f"{STEM}.pt"))
    assert isinstance(state["module"], SafetensorsState) and list(state) == ["module"]
    loaded, _ = AutoModel.from_pretrained(folder)
    _assert_same_state(loaded, expected)


def test_pt_stays_the_default_and_both_formats_load_the_same_model(tmp_path, tiny_args):
    args = tiny_args(is_gated_mlp=True)
    model = BaseModel(args).eval()
    args.save = str(tmp_path / "pt")
    save_checkpoint(1, model, None, None, args)  # args without checkpoint_format: the original's file
    assert [n for n in os.listdir(tmp_path / "pt" / "1") if n.startswith("mp_rank")] == [f"{STEM}.pt"]
    _save(model, args, str(tmp_path / "st"))
    from_pt, _ = AutoModel.from_pretrained(str(tmp_path / "pt"))
    from_st, _ = AutoModel.from_pretrained(str(tmp_path / "st"))
    _assert_same_state(from_st, from_pt.state_dict())
    with torch.no_grad():
        assert torch.equal(from_st(IDS, POSITIONS, None)[0], from_pt(IDS, POSITIONS, None)[0])


class TiedHead(BaseMixin):
    """An output head that is the word embedding: one Parameter under two state-dict keys."""

    def __init__(self, embedding: torch.nn.Parameter):
        super().__init__()
        self.weight = embedding


class TiedModel(BaseModel):
    def __init__(self, args, **kwargs):
        super().__init__(args, **kwargs)
        self.add_mixin("head", TiedHead(self.transformer.word_embeddings.weight))


def test_tied_parameters_are_stored_once_and_tied_again(tmp_path, tiny_args):
    args = tiny_args()
    model = TiedModel(args)
    assert model.mixins.head.weight is model.transformer.word_embeddings.weight
    folder = _save(model, args, str(tmp_path / "ckpt"), max_shard_size="5GB")
    path = str(tmp_path / "ckpt" / "1" / f"{STEM}.safetensors")
    with safe_open(path, "pt") as f:
        assert len(f.keys()) == len(model.state_dict()) - 1
        # The first key in state-dict order (the mixins come first) holds the bytes.
        assert json.loads(f.metadata()["sat_aliases"]) == {"transformer.word_embeddings.weight": "mixins.head.weight"}
    state = read_checkpoint_file(os.path.join(folder, "1", f"{STEM}.pt"))["module"]
    assert state["mixins.head.weight"] is state["transformer.word_embeddings.weight"]

    loaded, _ = TiedModel.from_pretrained(folder)
    assert loaded.mixins.head.weight is loaded.transformer.word_embeddings.weight  # tied again
    _assert_same_state(loaded, model.state_dict())


def test_non_tensor_entries_go_to_the_extra_file_and_come_back(tmp_path):
    weights = {"w": torch.randn(3, 4), "b": torch.zeros(4, dtype=torch.bfloat16)}
    entries = {"iteration": 7, "data_position": {"train": 18}, "client_lr_scheduler": {"num_iters": 8}, **rng_states()}
    path = str(tmp_path / f"{STEM}.pt")
    write_model_states({"module": weights, **entries}, path, "safetensors")
    assert sorted(os.listdir(tmp_path)) == [f"{STEM}.extra.pt", f"{STEM}.safetensors"]
    state = read_checkpoint_file(path)
    assert state.keys() == {"module", *entries}
    assert state["iteration"] == 7 and state["data_position"] == {"train": 18}
    assert torch.equal(state["torch_rng_state"], entries["torch_rng_state"])
    assert state["np_rng_state"] == entries["np_rng_state"]
    assert all(torch.equal(state["module"][k], v) and state["module"][k].dtype == v.dtype for k, v in weights.items())

    write_model_states({"module": weights}, path, "pt")  # saving over it in the other format
    assert sorted(os.listdir(tmp_path)) == [f"{STEM}.pt"]
    with pytest.raises(ValueError, match=r"\['note'\] are not"):
        write_model_states({"module": {**weights, "note": "x"}}, path, "safetensors")


def test_damaged_files_raise_checkpoint_errors_naming_them(tmp_path, tiny_args):
    args = tiny_args()
    folder = _save(BaseModel(args), args, str(tmp_path / "ckpt"))
    iteration_dir = os.path.join(folder, "1")
    _without_manifest(iteration_dir)
    first = os.path.join(iteration_dir, f"{STEM}-00001-of-00008.safetensors")
    second = os.path.join(iteration_dir, f"{STEM}-00002-of-00008.safetensors")
    data = open(first, "rb").read()

    open(first, "wb").write(data[:-100])  # truncated
    with pytest.raises(CheckpointError, match=f"{first} is not a readable safetensors file"):
        AutoModel.from_pretrained(folder)
    flipped = bytearray(data)
    flipped[8] ^= 0xFF  # the header's opening brace
    open(first, "wb").write(bytes(flipped))
    with pytest.raises(CheckpointError, match=f"{first} is not a readable safetensors file"):
        AutoModel.from_pretrained(folder)
    open(first, "wb").write(data)
    os.remove(second)
    with pytest.raises(CheckpointError, match=f"index.json names {second}, which does not exist"):
        AutoModel.from_pretrained(folder)


def test_resume_finds_a_safetensors_checkpoint_without_manifest(tmp_path, tiny_args):
    """The reshard tool writes no manifest; resuming from its output needs the model file only."""
    args = tiny_args()
    folder = _save(BaseModel(args), args, str(tmp_path / "ckpt"))
    _without_manifest(os.path.join(folder, "1"))
    assert choose_resume_iteration(folder, writable=False) == 1


def test_mp2_safetensors_reshards_to_mp1_and_mp4_exactly(tmp_path, tiny_args):
    """The MP2 checkpoint comes from the offline tool (its splitting is checked against live MP2
    ranks in test_model_parallel); merged back it must equal its source bit for bit."""
    args = tiny_args(vocab_size=128)
    model = BaseModel(args)
    expected = model.state_dict()
    _save(model, args, str(tmp_path / "mp1"))
    reshard_main(
        [str(tmp_path / "mp1"), str(tmp_path / "mp2"), "--model-parallel-size", "2", "--max-shard-size", "20KB"]
    )
    assert sorted(n for n in os.listdir(tmp_path / "mp2" / "1") if n.endswith(".index.json")) == [
        f"mp_rank_0{r}_model_states.safetensors.index.json" for r in range(2)
    ]  # the source's format, sharded
    mp2_rank1 = read_checkpoint_file(str(tmp_path / "mp2" / "1" / "mp_rank_01_model_states.pt"))["module"]
    assert mp2_rank1["transformer.word_embeddings.weight"].shape == (64, 32)

    online, online_args = AutoModel.from_pretrained(str(tmp_path / "mp2"), overwrite_args={"model_parallel_size": 1})
    assert online_args.model_parallel_size == 1
    _assert_same_state(online, expected)

    reshard_main([str(tmp_path / "mp2"), str(tmp_path / "mp4"), "--model-parallel-size", "4"])
    reshard_main(
        [str(tmp_path / "mp2"), str(tmp_path / "mp1-pt"), "--model-parallel-size", "1", "--checkpoint-format", "pt"]
    )
    assert [n for n in os.listdir(tmp_path / "mp1-pt" / "1") if n.startswith("mp_rank")] == [f"{STEM}.pt"]
    ranks = sorted(n for n in os.listdir(tmp_path / "mp4" / "1") if n.startswith("mp_rank"))
    assert ranks == [f"mp_rank_0{r}_model_states.safetensors" for r in range(4)]  # one file each under 5GB
    reshard_main([str(tmp_path / "mp4"), str(tmp_path / "mp4-1"), "--model-parallel-size", "1"])
    for merged in ("mp1-pt", "mp4-1"):
        loaded, _ = AutoModel.from_pretrained(str(tmp_path / merged))
        _assert_same_state(loaded, expected)


def test_ema_weights_are_saved_in_the_chosen_format(tmp_path, tiny_args):
    args = tiny_args()
    model = BaseModel(args)
    optimizer = FusedEmaAdam(model.parameters(), lr=1e-2, ema_decay=0.5)
    model(IDS, POSITIONS, None)[0].square().mean().backward()
    optimizer.step()
    trained = {key: value.clone() for key, value in model.state_dict().items()}
    args.save, args.checkpoint_format = str(tmp_path), "safetensors"
    save_checkpoint(1, model, optimizer, None, args)
    assert f"{STEM}.safetensors" in os.listdir(tmp_path / "1-ema")
    assert verify_directory(str(tmp_path / "1-ema"), checksums=True) == []  # sealed, as an iteration directory
    ema, _ = AutoModel.from_pretrained(str(tmp_path), specific_iteration="1-ema")
    for name, parameter in model.named_parameters():
        assert torch.equal(ema.state_dict()[name], optimizer.state[parameter]["shadow"]), name
    _assert_same_state(model, trained)  # the model keeps its trained weights


# ----------------------------------------------------------------------------- HF directories
def _hf_gpt2(**overrides) -> GPT2LMHeadModel:
    config = dict(n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=64, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(GPT2Config(**{**config, **overrides})).eval()


def test_save_hf_writes_shards_transformers_loads(tmp_path):
    hf = _hf_gpt2()
    model, _ = from_hf(hf)
    directory = str(tmp_path / "hf")
    save_hf(model, directory, max_shard_size="20KB")
    files = sorted(os.listdir(directory))
    shards = [n for n in files if n.endswith(".safetensors")]
    assert len(shards) > 3 and shards[-1] == f"model-{len(shards):05d}-of-{len(shards):05d}.safetensors"
    assert "model.safetensors.index.json" in files and "config.json" in files and "model.safetensors" not in files

    reloaded = AutoModelForCausalLM.from_pretrained(directory).eval()
    assert type(reloaded) is GPT2LMHeadModel
    _assert_same_state(reloaded, hf.state_dict())  # every weight, bit for bit
    with torch.no_grad():
        sat_logits = model(IDS, POSITIONS, -1)[0]  # -1: the causal mask
        assert (reloaded(IDS).logits - sat_logits).abs().max() < 1e-5  # the families' parity bound

    save_hf(model, directory)  # again, unsharded: the old shards and index go
    assert sorted(os.listdir(directory)) == ["config.json", "model.safetensors"]


def test_from_hf_reads_a_sharded_directory_like_the_single_file(tmp_path):
    hf = _hf_gpt2(tie_word_embeddings=False)
    hf.save_pretrained(tmp_path / "single")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert len([n for n in os.listdir(tmp_path / "sharded") if n.endswith(".safetensors")]) > 3
    weights = read_hf_weights(str(tmp_path / "sharded"))
    assert isinstance(weights, SafetensorsState)  # lazy: nothing read before use
    single, _ = from_hf(str(tmp_path / "single"))
    sharded, _ = from_hf(str(tmp_path / "sharded"))
    _assert_same_state(sharded, single.state_dict())

    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    missing = os.path.join(str(tmp_path / "sharded"), sorted(set(index["weight_map"].values()))[1])
    os.remove(missing)
    with pytest.raises(CheckpointError, match=f"names {missing}, which does not exist"):
        from_hf(str(tmp_path / "sharded"))


def test_safetensors_tensors_are_views_that_read_nothing_until_used(tmp_path):
    """``SafetensorsState`` gives ``safe_open``'s tensors, bit for bit, as views of one mapping of
    the file; unlike ``get_tensor`` (which reads each tensor's first page, and with it the
    kernel's read-around window), taking them reads nothing from a file not in the page cache."""
    hf = _hf_gpt2(tie_word_embeddings=False)
    hf.to(torch.bfloat16).save_pretrained(tmp_path)
    path = str(tmp_path / "model.safetensors")
    weights = SafetensorsState(str(tmp_path), "model")
    if not dropped_from_page_cache(path):
        pytest.skip("this file system keeps the file in the page cache (tmpfs?)")
    tensors = {key: weights[key] for key in weights}
    assert cached_pages(path) == 0
    with safe_open(path, "pt") as expected:
        assert sorted(tensors) == sorted(expected.keys())
        for key, tensor in tensors.items():
            reference = expected.get_tensor(key)
            assert tensor.dtype == reference.dtype == torch.bfloat16 and torch.equal(tensor, reference), key


# ----------------------------------------------------------------------------- training
def _argv(save: str) -> list[str]:
    argv = list(ARGV)
    for flag, value in (("--train-iters", "4"), ("--save-interval", "2")):
        argv[argv.index(flag) + 1] = value
    return [*argv, "--save", save, "--checkpoint-format", "safetensors", "--max-shard-size", "20KB"]


@pytest.mark.slow
def test_training_saves_safetensors_and_resumes_exactly(tmp_path):
    """One process, ZeRO stage 0 (the optimizer state rides in the model file's entries): 4
    iterations saved at 2 and 4; resumed from 2, iterations 3-4 repeat the uninterrupted run."""
    (reference,) = launch(str(tmp_path / "ref"), 1, _argv(str(tmp_path / "ref" / "checkpoints")))
    checkpoint = os.path.join(str(tmp_path / "ref" / "checkpoints"), reference["experiment_name"])
    files = os.listdir(os.path.join(checkpoint, "2"))
    assert f"{STEM}.safetensors.index.json" in files and f"{STEM}.extra.pt" in files and f"{STEM}.pt" not in files
    state = read_checkpoint_file(os.path.join(checkpoint, "2", f"{STEM}.pt"))
    assert state["iteration"] == 2 and state["data_position"] == {"train": 4} and "optimizer" in state

    shutil.rmtree(os.path.join(checkpoint, "4"))
    open(os.path.join(checkpoint, "latest"), "w").write("2")
    resumed_argv = [*_argv(str(tmp_path / "resumed" / "checkpoints")), "--load", checkpoint]
    (resumed,) = launch(str(tmp_path / "resumed"), 1, resumed_argv)
    assert resumed["losses"] == reference["losses"][4:]  # the micro-batches of iterations 3 and 4
    for name, value in reference["params"].items():
        assert torch.equal(resumed["params"][name], value), name
