"""CPU matrix products of decoding: which route and weight layout is fastest for few rows.

    python bench/linear.py [--rows 1 8 32 1024] [--repeats 30]

Times ``x [rows, in] @ W^T`` over the four linear layers of 12 GPT-2-medium blocks (weights
too large for the cache, as in a real forward), for a weight stored ``[out, in]`` (row-major,
``nn.Linear``'s layout) or ``[in, out]`` (column-major view, GPT-2 Conv1D's layout), through
``F.linear`` and through ``sat.ops.linear.linear``. Microseconds per product, medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from common import markdown_table

from sat.ops.linear import linear

SHAPES = [(768, 2304), (768, 768), (768, 3072), (3072, 768)]  # (in, out) of one GPT-2-medium block
LAYERS = 12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 8, 32, 1024])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    row_major = [[torch.randn(o, i) for i, o in SHAPES] for _ in range(LAYERS)]
    column_major = [[torch.randn(i, o).t() for i, o in SHAPES] for _ in range(LAYERS)]
    biases = [[torch.randn(o) for _, o in SHAPES] for _ in range(LAYERS)]
    routes = {
        "F.linear, [out, in]": (F.linear, row_major),
        "sat linear, [out, in]": (linear, row_major),
        "F.linear, [in, out]": (F.linear, column_major),
        "sat linear, [in, out]": (linear, column_major),
    }
    rows = []
    for n in args.rows:
        inputs = {i: torch.randn(n, i) for i in (768, 3072)}
        times: dict[str, list[float]] = {name: [] for name in routes}
        for repeat in range(args.repeats + 1):
            for name, (fn, weights) in routes.items():
                start = time.perf_counter()
                for layer in range(LAYERS):
                    for (i, _), w, b in zip(SHAPES, weights[layer], biases[layer]):
                        fn(inputs[i], w, b)
                if repeat:  # the first pass warms up
                    times[name].append((time.perf_counter() - start) / (LAYERS * len(SHAPES)))
        rows.append([n] + [f"{statistics.median(t) * 1e6:.0f}" for t in times.values()])
    print(markdown_table(["rows"] + list(routes), rows))
    print(f"\nmicroseconds per product; {torch.get_num_threads()} threads, torch {torch.__version__}")


if __name__ == "__main__":
    main()
