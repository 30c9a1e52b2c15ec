"""Check a checkpoint against its manifest, every byte (sizes and SHA-256)::

    python -m sat.tools.verify_checkpoint CHECKPOINT_DIR [--iteration N]

``CHECKPOINT_DIR`` is a directory with ``latest`` (its iteration is checked, or ``--iteration``'s)
or an iteration directory itself. Prints each problem, naming the file; exits 1 when there is
one, 0 when the checkpoint is intact or has no manifest (said so: the original's checkpoints).
"""

from __future__ import annotations

import argparse
import os
import sys

from sat.checkpoint import get_checkpoint_iteration
from sat.checkpoint.manifest import MANIFEST, verify_directory


def _iteration_directory(path: str, iteration: str | None) -> str:
    if iteration is not None:
        return os.path.join(path, iteration)
    if os.path.isfile(os.path.join(path, MANIFEST)) or not os.path.isfile(os.path.join(path, "latest")):
        return path
    number, release, _ = get_checkpoint_iteration(path)
    return os.path.join(path, "release" if release else str(number))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint directory (with latest) or an iteration directory")
    parser.add_argument("--iteration", help="the iteration to check instead of latest's")
    options = parser.parse_args(argv)
    directory = _iteration_directory(options.checkpoint, options.iteration)
    problems = verify_directory(directory, checksums=True)
    if problems is None:
        print(f"{directory} has no {MANIFEST} (written by the original library or an older sat): nothing to verify")
        return 0
    for problem in problems:
        print(problem)
    if not problems:
        print(f"{directory}: every file matches {MANIFEST}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
