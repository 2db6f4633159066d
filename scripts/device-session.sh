#!/usr/bin/env bash
# Everything one lent GPU session is for, in one command (the `device` tool gives 15 minutes,
# start-up included, and one command may run 10):
#   1. trains the arms named in ARMS side by side on the one GPU, MINUTES each: "big"
#      (transformer-gpu-big.toml: 21.0M parameters, twice the shipped model, stored in int8;
#      the next thing to try for captions readers take for people's, alone on the GPU:
#      ARMS="big" ... 7), "votes" (transformer-gpu-votes.toml, the shipped model's recipe) and
#      "base" (transformer-gpu.toml: the same without the votes); default "base votes";
#   2. scores each on the full validation split, as it would ship;
#   3. runs the pool's CUDA path: bench/generation.py --device cuda at concurrency 1-256, and the
#      tests that need a GPU (tests/test_cuda.py, tests/test_pool.py).
# Outputs land in $OUT as they are made, so a run cut short still returns what it finished:
# each arm's best checkpoint as it would ship, fp16 or int8 (split in 15 MB parts: the tool
# returns files of 16 MiB at most; `cat big.pt.part-* > x.pt` joins them) and results.tar.gz (logs, curves, evals, bench).
#   here, once:  .venv/bin/memebot data pack       # -> pack/imgflip575k.npz (git-ignored)
#                wheels of aiosqlite, rapidfuzz, pytest-asyncio for Python 3.12 in .whl/
#   device run:  ARMS="big" bash scripts/device-session.sh 7     with carry ["pack", ".whl"]
#                (the default arms: bash scripts/device-session.sh 4; RESUME=1 to continue the run folders of a warm machine;
#                 never `git checkout` there: its .git is an old main)
#   dry run here: DEVICE=cpu PYTHON=.venv/bin/python EVAL_LIMIT=300 BENCH_ARGS=--quick \
#                 bash scripts/device-session.sh 0.3
set -uo pipefail
minutes=${1:?usage: device-session.sh MINUTES}
out=${OUT:-/tmp/device-out}
device=${DEVICE:-cuda}
python=${PYTHON:-python3}
eval_limit=${EVAL_LIMIT:-0}
bench_args=${BENCH_ARGS:---levels 1,32,128,256 --max-batch 256 --reps 10}
data=pack/imgflip575k.npz
read -r -a arms <<<"${ARMS:-base votes}"  # ARMS="votes" trains one arm, with the GPU to itself
declare -A recipe=([base]=training/recipes/transformer-gpu.toml [votes]=training/recipes/transformer-gpu-votes.toml
                   [big]=training/recipes/transformer-gpu-big.toml)
mkdir -p "$out" "$out/results"
res=$out/results
export PYTHONUNBUFFERED=1
[ -f "$data" ] || { echo "no $data: run \`memebot data pack\` here and carry \"pack\"" >&2; exit 2; }
if [ "$device" != cpu ] && compgen -G ".whl/*.whl" >/dev/null; then
    # The GPU image has torch but not these; no registry is reachable there.
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
pack_results() { tar czf "$out/results.tar.gz" -C "$out" results; }
trap pack_results EXIT
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$res/gpu.txt"
"$python" -c 'import torch; print("torch", torch.__version__)' | tee -a "$res/gpu.txt"

# A machine still warm from an earlier call keeps its run folders: start afresh unless told to
# resume (RESUME=1), or a recipe of another shape would try to load the old state and fail.
[ -n "${RESUME:-}" ] || rm -rf runs/gpu-*
echo "== training ${arms[*]} for $minutes minutes each, side by side"
for arm in "${arms[@]}"; do
    "$python" -m cli.main train --recipe "${recipe[$arm]}" --data "$data" --run-dir "runs/gpu-$arm" \
        --device "$device" --threads 4 --max-minutes "$minutes" --quiet >"$res/train-$arm.log" 2>&1 &
done
wait
for arm in "${arms[@]}"; do
    tail -n 3 "$res/train-$arm.log"
    cp "runs/gpu-$arm/curves.csv" "$res/curves-$arm.csv" 2>/dev/null
    cp "runs/gpu-$arm/curves.png" "$res/curves-$arm.png" 2>/dev/null
    # Stored as it would ship: fp16 (half the bytes, and what serving with [model] half_weights
    # multiplies anyway), or int8 with a scale per row where fp16 would pass the 25 MB budget.
    "$python" -c "
import sys
from pathlib import Path
from model.checkpoint import load_checkpoint, save_checkpoint
ckpt = load_checkpoint(Path('runs/gpu-$arm/best.pt'))
params = sum(v.numel() for v in ckpt.state_dict.values())
small = ckpt.with_half_storage() if 2 * params <= 24_000_000 else ckpt.with_int8_storage()
save_checkpoint(small, Path('runs/gpu-$arm/best-ship.pt'))
print(f'$arm: {params / 1e6:.2f}M parameters, stored in', 'fp16' if 2 * params <= 24_000_000 else 'int8')
" && split -b 15000000 -d "runs/gpu-$arm/best-ship.pt" "$out/$arm.pt.part-"
done
pack_results

echo "== full validation"
for arm in "${arms[@]}"; do
    for weights in ship; do  # as shipped; fp32 is scored on the CPU later if wanted
        file=runs/gpu-$arm/best-ship.pt
        "$python" -m cli.main eval --checkpoint "$file" --data "$data" --device "$device" --json \
            --limit "$eval_limit" >"$res/eval-$arm-$weights.json" 2>"$res/eval-$arm-$weights.err"
        "$python" -c "import json; o = json.load(open('$res/eval-$arm-$weights.json'))['overall']; print(f\"$arm $weights: validation accuracy {100 * o['accuracy']:.2f}%, {o['bits_per_char']:.3f} bits/char\")" |
            tee -a "$res/summary.txt"
    done
done
pack_results

echo "== the pool's CUDA path"
best=$("$python" -c "
import json
acc = {a: json.load(open(f'$res/eval-{a}-ship.json'))['overall']['accuracy'] for a in '${arms[*]}'.split()}
print(max(acc, key=acc.get))" 2>/dev/null || echo base)
echo "-- runs/gpu-$best/best-ship.pt" | tee "$res/bench.txt"
timeout 120 "$python" bench/generation.py --device "$device" --checkpoint "runs/gpu-$best/best-ship.pt" \
    $bench_args 2>&1 | tee -a "$res/bench.txt"
pack_results
[ -n "${SKIP_TESTS:-}" ] && exit 0
timeout 60 "$python" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_pool.py 2>&1 |
    tail -n 25 | tee "$res/tests.txt"
