"""How long `import sat` takes, on top of `import torch`, in fresh interpreters.

    python bench/import_time.py [--runs 7]

Prints the median over the runs of: torch alone; `import sat` (lazy: public names load on first
use); `from sat.model import BaseModel, AutoModel` (the backbone, hooks, checkpoint code).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

SNIPPETS = {
    "import torch": "import torch",
    "import sat": "import torch, time; t = time.perf_counter(); import sat",
    "from sat.model import BaseModel, AutoModel": (
        "import torch, time; t = time.perf_counter(); from sat.model import BaseModel, AutoModel"
    ),
}


def measure(snippet: str) -> float:
    if snippet == "import torch":
        code = "import time; t = time.perf_counter(); import torch; print(time.perf_counter() - t)"
    else:
        code = snippet + "; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    print("| what | median seconds |\n|---|---|")
    for label, snippet in SNIPPETS.items():
        times = [measure(snippet) for _ in range(runs)]
        extra = "" if label == "import torch" else " (after torch)"
        print(f"| `{label}`{extra} | {statistics.median(times):.3f} |")


if __name__ == "__main__":
    main()
