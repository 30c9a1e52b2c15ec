"""Cut text files into fixed-length rows of byte tokens, the ``BinaryDataset`` format.

Tokens are the UTF-8 bytes of the text (a 256-token vocabulary: no tokenizer to train or
download). Each row holds ``seq_len + 1`` tokens, so a row gives ``seq_len`` inputs and their
next-token targets; consecutive rows overlap by one token.

    python prepare_data.py OUT.bin --seq-len 128 FILE [FILE ...]
"""

from __future__ import annotations

import argparse

import numpy as np


def prepare(paths: list[str], out: str, seq_len: int) -> int:
    """Write the rows to ``out`` (uint8); returns how many."""
    text = "\n\n".join(open(path, encoding="utf-8").read() for path in paths)
    tokens = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    rows = (len(tokens) - 1) // seq_len
    if rows < 1:
        raise ValueError(f"{len(tokens)} bytes of text are not enough for one row of {seq_len + 1}")
    starts = np.arange(rows) * seq_len
    np.stack([tokens[s : s + seq_len + 1] for s in starts]).tofile(out)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("files", nargs="+")
    parser.add_argument("--seq-len", type=int, default=128)
    options = parser.parse_args()
    rows = prepare(options.files, options.out, options.seq_len)
    print(f"{options.out}: {rows} rows of {options.seq_len + 1} byte tokens")


if __name__ == "__main__":
    main()
