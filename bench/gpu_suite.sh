#!/usr/bin/env bash
# The whole benchmark suite on a GPU machine (bf16), writing each table as markdown into one
# folder and all of them into ALL.md, so that figures come the first time a GPU is available:
#
#     bench/gpu_suite.sh [OUTDIR]            # default bench/results-cuda
#     bench/gpu_suite.sh --smoke [OUTDIR]    # the same scripts on this CPU, tiny sizes: checks the suite
#
# GPT-2 and LLaMA at the small and medium presets of models.py, and a 1B-class LLaMA (preset
# 1b, TinyLlama's shape); training.py's table has MFU against the GPU's peak
# (sat.training.throughput.PEAK_TFLOPS). PYTHON chooses the interpreter (default: python).
set -euo pipefail
cd "$(dirname "$0")"
smoke=0
if [[ "${1:-}" == "--smoke" ]]; then smoke=1; shift; fi
py=${PYTHON:-python}

if (( smoke )); then
    out=${1:-results-smoke}
    common=(--device cpu --dtype fp32 --repeats 1 --warmup 0)
    models=(--presets small); big=(); layers=(--preset small)
    generation=(--preset small --new-tokens 8 --batch 1); sat_gpt2=(--presets small --new-tokens 8 --batched-new-tokens 8)
    training=(--smoke); compile=(--smoke); loss=(--smoke)
else
    out=${1:-results-cuda}
    common=(--device cuda --dtype bf16)
    models=(--presets small medium); big=(--families llama --presets 1b); layers=(--preset medium)
    generation=(--preset medium); sat_gpt2=(--presets small medium)
    training=(--device cuda --dtype bf16 --preset medium --batch 8 --seq 1024)
    compile=(--device cuda --dtype bf16 --preset medium); loss=(--device cuda --dtype bf16)
fi
mkdir -p "$out"

run() {  # run NAME SCRIPT ARGS...: one table, NAME.md, with the command that made it
    local name=$1; shift
    echo "== $name: $py $*" >&2
    "$py" "$@" --output "$out/$name.md.tmp" > "$out/$name.log" 2>&1 || { echo "$name failed: $out/$name.log" >&2; return 1; }
    { echo "### $name"; echo; echo "\`python bench/$*\`"; echo; cat "$out/$name.md.tmp"; echo; } > "$out/$name.md"
    rm "$out/$name.md.tmp"
}

run models models.py "${models[@]}" "${common[@]}"
if (( ${#big[@]} )); then run models-1b models.py "${big[@]}" "${common[@]}"; fi
run layers layers.py "${layers[@]}" "${common[@]}"
run generation generation.py "${generation[@]}" "${common[@]}"
run sat_gpt2 sat_gpt2.py "${sat_gpt2[@]}" "${common[@]}"
run training training.py "${training[@]}"
run compile compile.py "${compile[@]}"
run loss loss.py "${loss[@]}"
for table in "$out"/*.md; do [[ $table == "$out/ALL.md" ]] || cat "$table"; done > "$out/ALL.md.tmp"
mv "$out/ALL.md.tmp" "$out/ALL.md"
echo "tables in $out/ALL.md" >&2
