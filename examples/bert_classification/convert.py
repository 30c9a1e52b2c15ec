"""Turn a ``transformers`` BERT directory into a sat checkpoint (with its tokenizer inside), the
starting point of ``finetune.py``.

    python convert.py HF_DIR OUT_DIR
"""

from __future__ import annotations

import os
import sys

from transformers import AutoTokenizer

from sat.hf import from_hf
from sat.training.model_io import save_checkpoint


def convert(hf_dir: str, out_dir: str) -> str:
    """Write ``out_dir`` (``latest``, ``0/``, ``model_config.json``, ``tokenizer/``); returns it."""
    model, args = from_hf(hf_dir)
    tokenizer_dir = os.path.join(out_dir, "tokenizer")
    AutoTokenizer.from_pretrained(hf_dir, local_files_only=True).save_pretrained(tokenizer_dir)
    args.tokenizer_type = tokenizer_dir  # recorded relative to out_dir: the folder can move
    args.save = out_dir
    save_checkpoint(0, model, None, None, args)
    return out_dir


if __name__ == "__main__":
    print(convert(sys.argv[1], sys.argv[2]))
