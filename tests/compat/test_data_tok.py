"""The original's users' data and tokenizer idioms through public paths: tests/test_multi_webds.py
and tests/test_jsonlds.py of SwissArmyTransformer (tar shards with side-car metadata, JSON lines
packed into fixed-length token blocks, both through make_loaders), and get_tokenizer with a Hub
name or an outer tokenizer."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
from tar_shards import write_shards

import sat.tokenization
from sat import get_args, get_tokenizer
from sat.data_utils import JsonlIterableDataset, MetaDistributedWebDataset, make_loaders

WORDS = "the quick brown fox jumps over the lazy dog".split()


@pytest.fixture(autouse=True)
def _fresh_tokenizer():
    sat.tokenization._current.clear()
    yield
    sat.tokenization._current.clear()


def test_multi_webds_batches_come_from_one_source(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_shards(tmp_path / "a", 2, 6)
    write_shards(tmp_path / "b", 2, 6, start=10)
    for shard in ("a/000", "a/001"):  # only the first source's samples carry a phash
        keys = [f"s{int(shard[-1])}_{i}" for i in range(6)]
        (tmp_path / f"{shard}.meta.jsonl").write_text(
            "".join(json.dumps({"key": k, "image_phash": "f0"}) + "\n" for k in keys)
        )
    args = get_args(
        ["--batch-size", "3", "--train-data", f"{tmp_path}/a/00{{0..1}}.tar", f"{tmp_path}/b/01{{0..1}}.tar"]
        + ["--train-data-weights", "2", "1", "--iterable-dataset", "--split", "1", "--num-workers", "1"]
        + ["--batch-from-same-dataset"]
    )

    def process_fn(src):
        for x in src:
            yield 1 if x["image_phash"] is not None else 0

    def create_func(path, args):
        return MetaDistributedWebDataset(path, process_fn, seed=0, meta_names=["image_phash"])

    train_loader, val_loader, test_loader = make_loaders(args, create_dataset_function=create_func)
    counts = [0, 0, 0]  # all 0, all 1, mixed
    for i, x in enumerate(train_loader):
        if i >= 30:
            break
        counts[0 if all(y == 0 for y in x) else 1 if all(y == 1 for y in x) else 2] += 1
    assert counts[2] == 0 and counts[0] > 0 and counts[1] > counts[0]
    assert val_loader is None and test_loader is None


def test_jsonlds_packs_records_into_token_blocks(tmp_path):
    (tmp_path / "book").mkdir()
    (tmp_path / "code.jsonl").write_text("".join(json.dumps({"code": " ".join(WORDS[i:])}) + "\n" for i in range(9)))
    (tmp_path / "book" / "0.jsonl").write_text(
        "".join(json.dumps({"content": " ".join(WORDS)}) + "\n" for _ in range(5))
    )
    (tmp_path / "wudao.jsonl").write_text("".join(json.dumps({"content": w, "extra": None}) + "\n" for w in WORDS))
    args = get_args(
        ["--batch-size", "2", "--train-data", f"{tmp_path}/code.jsonl,{tmp_path}/book", f"{tmp_path}/wudao.jsonl"]
        + ["--train-data-weights", "2", "1", "--iterable-dataset", "--split", "1", "--num-workers", "0"]
    )
    vocab = {w: i for i, w in enumerate(sorted(set(WORDS)))}

    def process_fn(src, seq_len):
        buffered = torch.tensor([], dtype=torch.long)
        for x in src:
            type_id = 0 if "code" in x else 2 if x.get("extra") == "" else 1  # code, book, wudao (None -> '')
            txt = x["code"] if "code" in x else x["content"]
            buffered = torch.cat((buffered, torch.tensor([vocab[w] for w in txt.split()])))
            while buffered.shape[0] >= seq_len:  # yield per seq_len
                yield {"txt": buffered[:seq_len], "type_id": type_id}
                buffered = buffered[seq_len:]

    def create_func(path, args):
        return JsonlIterableDataset(path, partial(process_fn, seq_len=4), seed=1, shuffle_buffer=1)

    train_loader, _, _ = make_loaders(args, create_dataset_function=create_func)
    counts = [0, 0, 0]
    for i, x in enumerate(train_loader):
        assert x["txt"].shape == (2, 4)
        counts[x["type_id"][0].item()] += 1
        if i > 40:
            break
    assert min(counts) > 0


def test_tokenizer_by_hub_name_and_outer_tokenizer(tmp_path, monkeypatch):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # bert-base-uncased as the HF cache holds it after `hf download bert-base-uncased`.
    repo = tmp_path / "hub" / "models--bert-base-uncased"
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *sorted(set(WORDS))])}, "[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)

    args = get_args(["--tokenizer-type", "bert-base-uncased", "--mode", "inference"])
    tokenizer = get_tokenizer(args)
    assert tokenizer.encode("the lazy dog") == [8, 5, 2] and get_tokenizer() is tokenizer
    outer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    assert get_tokenizer(outer_tokenizer=outer) is outer and get_tokenizer() is outer


def test_glm_inference_script_tokenizer_idiom(tmp_path, monkeypatch):
    import argparse

    from tiny_vocabs import cache_as_hub_repo, write_gpt2_vocab

    from sat.model import GLMModel

    # gpt2 as the HF cache holds it after `hf download gpt2` (a tiny hand-written vocabulary).
    cache_as_hub_repo(tmp_path, "gpt2", write_gpt2_vocab)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    # examples/glm/inference_glm.py with config/model_glm_10B.sh's tokenizer flags.
    argv = ["--mode", "inference", "--tokenizer-type", "glm_GPT2BPETokenizer", "--tokenizer-model-type", "gpt2"]
    py_parser = argparse.ArgumentParser(add_help=False)
    GLMModel.add_model_specific_args(py_parser)
    known, args_list = py_parser.parse_known_args([*argv, "--task-mask"])
    args = get_args(args_list)
    args = argparse.Namespace(**vars(args), **vars(known))
    tokenizer = get_tokenizer(args)

    raw_text = "Hello world"
    generation_mask = "[gMASK]" if args.task_mask else "[MASK]"
    if "MASK]" not in raw_text:
        raw_text += " " + generation_mask
    seq = tokenizer.EncodeAsIds(raw_text).tokenization
    seq = [tokenizer.get_command("ENC").Id] + seq
    mask_tokens = [tokenizer.get_command(token).Id for token in ["MASK", "sMASK", "gMASK"]]
    assert seq == [26, 17, 22, 30] and mask_tokens == [27, 31, 30]
    output = seq + [tokenizer.get_command("sop").Id, 23, 9, tokenizer.get_command("eop").Id]
    assert tokenizer.DecodeIds(output) == "[CLS] Hello world [gMASK] <|startofpiece|>  a! <|endofpiece|>"
