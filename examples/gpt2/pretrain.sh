#!/usr/bin/env bash
# Pretrain a small GPT-2 (4 layers, hidden 128, byte tokens) from scratch on the text this
# repository ships (README.md and docs/), with the DeepSpeed launcher (every GPU, or 2 CPU
# processes), then print a sampled continuation.
#
#   examples/gpt2/pretrain.sh WORK_DIR [more training arguments...]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
python=${PYTHON:-python3}
work=${1:?usage: $0 WORK_DIR [training arguments...]}
shift
mkdir -p "$work"

"$python" "$here/prepare_data.py" "$work/text.bin" --seq-len 128 "$root/README.md" "$root"/docs/*.md "$root"/docs/*/*.md

"$root/scripts/ds_launch.sh" "$here/pretrain_gpt2.py" \
    --num-layers 4 --hidden-size 128 --num-attention-heads 4 --vocab-size 256 --max-sequence-length 128 \
    --hidden-dropout 0.1 --attention-dropout 0.1 \
    --train-data "$work/text.bin" --split 95,5,0 --batch-size 8 --train-iters 300 \
    --lr 2e-3 --warmup 0.05 --lr-decay-style cosine --weight-decay 0.1 \
    --log-interval 50 --eval-interval 100 --eval-iters 5 --num-workers 0 \
    --save "$work/checkpoints" --save-interval 1000 --experiment-name gpt2-docs "$@"
