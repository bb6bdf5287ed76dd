#!/usr/bin/env bash
# Three trainings at once on one GPU, over the pools of `python -m training.probes.gpu_scale W`.
# Each variant: its main run, then the recipe's fine-tune from it; W/status gets the exits.
set -u
W=${1:?usage: bash training/probes/gpu_scale.sh WORK (the folder gpu_scale.py filled)}
T="python3 -m training.train --device cuda"
variant() {  # name, pool, main-run flags; $FT: the fine-tune's extra flags
  name=$1; data=$2; shift 2
  $T --config "$W/main.json" --data "$W/$data" --val-data "$W/val" --out "$W/$name/main" "$@" \
    && $T --config "$W/finetune.json" --data "$W/$data" --val-data "$W/val" \
         --init-from "$W/$name/main/last.pt" --out "$W/$name/ft" --max-minutes 1.5 $FT
  echo "$name exit $?" >> "$W/status"
}
FT="--workers 2" variant A base --workers 2 --max-minutes 6 > "$W/A.log" 2>&1 &
FT="--workers 4 --batch-size 16" variant B all --workers 4 --batch-size 16 --steps 10000 \
  --max-minutes 7.5 > "$W/B.log" 2>&1 &
FT="--workers 4 --batch-size 16" variant C base --workers 4 --batch-size 16 --steps 10000 \
  --max-minutes 7.5 > "$W/C.log" 2>&1 &
wait
