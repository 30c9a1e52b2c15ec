#!/usr/bin/env bash
# Build a scratch virtual environment with the original SwissArmyTransformer 0.4.12, used only
# to regenerate the compatibility fixtures (tests/fixtures/original_sat/make_fixtures.py).
# Its `import sat` also needs the undeclared triton (~1 GB), wandb and requests.
set -euo pipefail
target=${1:-/tmp/origsat}
python3 -m venv "$target"
echo "torch==2.13.0" > "$target/constraints.txt"
PIP_CONSTRAINT="$target/constraints.txt" "$target/bin/pip" install --quiet \
    torch==2.13.0 SwissArmyTransformer==0.4.12 triton wandb requests
"$target/bin/python" -c "import sat; print('original sat at', sat.__file__)"
