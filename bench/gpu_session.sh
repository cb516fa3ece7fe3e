#!/usr/bin/env bash
# Everything this repo does on a lent GPU machine, in one command of under 10 minutes (from the repo root):
#   1. bench/gpu_check.py: the CUDA op (build, correctness, gradcheck, timings) and the detector vs transformers;
#   2. while the op builds, the shapes training data is generated on the CPU cores;
#   3. the shipped "shapes" detector and SAM train side by side on the GPU for TRAIN_MINUTES each;
#   4. both are scored on the held-out scenes (results.json in session.tgz).
# Results land in $OUT (default /tmp/gpu_session): gpu_check.json, session.tgz (logs), model_fp16.pth, sam_fp16.pth.
# Python packages the GPU image lacks (segment-anything, supervision, defusedxml) come as wheels in .whl/.
set -u
OUT=${OUT:-/tmp/gpu_session}
TRAIN_MINUTES=${TRAIN_MINUTES:-5}
CHECK_SECONDS=${CHECK_SECONDS:-230}  # whole seconds; 0 skips gpu_check
GPU_CHECK_ARGS=${GPU_CHECK_ARGS:-}  # e.g. --skip-op
TRAIN_PARTS=${TRAIN_PARTS-detector sam}  # empty: no training
EVAL_SECONDS=${EVAL_SECONDS:-90}  # held-out evaluation on the GPU after training; 0 skips it
DEMO_ARGS=${DEMO_ARGS:-}  # extra demo_model arguments for every part, e.g. a smaller --train-images for a trial
# extra arguments for detector training and the evaluation only, e.g. to continue the shipped detector:
# "--batch-size 256 --init-detector FILE"
DETECTOR_ARGS=${DETECTOR_ARGS:-}
WORK=/tmp/shapes_run
mkdir -p "$OUT" "$WORK/logs"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
started=$(date +%s)
stamp() { echo "[$(( $(date +%s) - started )) s] $*" | tee -a "$WORK/logs/session.log"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$WORK/logs/nvidia_smi.txt" 2>&1

stamp "data generation starts (background)"
python3 -m grounding.train.demo_model --out "$WORK" --part data --workers 12 --no-progress $DEMO_ARGS >"$WORK/logs/data.log" 2>&1 &
data_pid=$!

if [ "$CHECK_SECONDS" -gt 0 ]; then  # CHECK_SECONDS=0: training only
    stamp "gpu_check starts"
    timeout "$CHECK_SECONDS" python3 bench/gpu_check.py $GPU_CHECK_ARGS --json "$OUT/gpu_check.json" \
        >"$WORK/logs/gpu_check.log" 2>&1
    stamp "gpu_check exit $?"
fi
wait $data_pid
stamp "data generation exit $? ($(ls "$WORK/data/train/images" 2>/dev/null | wc -l) train images)"

# Training uses the CUDA op when it built (its gradients matched the PyTorch path's on an H100, rel. 1.7e-7).
stamp "training starts: $TRAIN_PARTS"
limit=$(python3 -c "print(int($TRAIN_MINUTES * 60 + 90))")  # start-up (data index, workers) and final saves
pids=()
for part in $TRAIN_PARTS; do
    workers=$([ "$part" = detector ] && echo 8 || echo 4)
    part_args=$([ "$part" = detector ] && echo "$DETECTOR_ARGS")
    timeout "$limit" python3 -m grounding.train.demo_model --out "$WORK" --part "$part" \
        --minutes "$TRAIN_MINUTES" --anneal-to-time-limit --workers "$workers" --no-progress $DEMO_ARGS $part_args \
        >"$WORK/logs/$part.log" 2>&1 &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; stamp "training process $pid exit $?"; done
if [ "$EVAL_SECONDS" -gt 0 ] && [ -n "$TRAIN_PARTS" ]; then  # held-out AP50, absent rate, mask IoU -> results.json
    timeout "$EVAL_SECONDS" python3 -m grounding.train.demo_model --out "$WORK" --part eval --no-progress $DEMO_ARGS $DETECTOR_ARGS \
        >"$WORK/logs/eval.log" 2>&1
    stamp "evaluation exit $?"
fi

python3 - "$WORK/model" "$OUT" <<'EOF' >>"$WORK/logs/session.log" 2>&1
import sys, torch
from pathlib import Path
model_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
from grounding.shipped import half_precision as half  # fp16, tied tensors kept tied
for name, target in (("model.pth", "model_fp16.pth"), ("sam.pth", "sam_fp16.pth")):
    if (model_dir / name).is_file():
        checkpoint = torch.load(model_dir / name, map_location="cpu", weights_only=True)
        if "model" in checkpoint and isinstance(checkpoint["model"], dict):
            checkpoint = {**checkpoint, "model": half(checkpoint["model"])}
        else:
            checkpoint = half(checkpoint)
        torch.save(checkpoint, out / target)
        print("saved", out / target)
EOF
cp "$WORK"/model/*.jsonl "$WORK/results.json" "$WORK/logs/" 2>/dev/null
tar -czf "$OUT/session.tgz" -C "$WORK" logs
stamp "done"
