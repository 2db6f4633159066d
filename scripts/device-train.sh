#!/usr/bin/env bash
# Train on a lent GPU machine (the `device` tool), where only the checkout travels.
#   here, once:  .venv/bin/memebot data pack          # -> pack/imgflip575k.npz (git-ignored, ~30 MB)
#   device run:  bash scripts/device-train.sh training/recipes/transformer-gpu.toml 8
#                with carry ["pack"] (and the run folder, to resume one)
# The best checkpoint, its curves, the log and the full validation eval come back under $OUT;
# copy best.pt to data/models/ and run `memebot eval --record` here if it beats the shipped model.
set -euo pipefail
recipe=${1:?usage: device-train.sh RECIPE MINUTES [RUN_DIR]}
minutes=${2:?usage: device-train.sh RECIPE MINUTES [RUN_DIR]}
run_dir=${3:-runs/device}
out=${OUT:-/tmp/device-out}
# A dry run here first: DEVICE=cpu PYTHON=.venv/bin/python EVAL_LIMIT=200 bash scripts/device-train.sh RECIPE 0.2
device=${DEVICE:-cuda}
python=${PYTHON:-python3}
eval_limit=${EVAL_LIMIT:-0}
data=pack/imgflip575k.npz
mkdir -p "$out"
export PYTHONUNBUFFERED=1
[ -f "$data" ] || { echo "no $data: run \`memebot data pack\` here and carry \"pack\"" >&2; exit 2; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv
"$python" -m cli.main train --recipe "$recipe" --data "$data" --run-dir "$run_dir" --device "$device" \
    --max-minutes "$minutes" --quiet 2>&1 | tee "$out/train.log"
cp "$run_dir/best.pt" "$run_dir/curves.csv" "$run_dir/curves.png" "$out/"
"$python" -m cli.main eval --checkpoint "$run_dir/best.pt" --data "$data" --device "$device" --json \
    --limit "$eval_limit" >"$out/eval.json"
"$python" -c "import json; o = json.load(open('$out/eval.json'))['overall']; print(f\"validation accuracy {100 * o['accuracy']:.2f}%, {o['bits_per_char']:.3f} bits/char\")"
