#!/usr/bin/env bash
# The distillation study (README "Results"): every row trains the same student on the same data
# (profile full_grid) for the same wall-clock budget; only its teacher term differs.
#   scripts/study.sh STAGE [ROOT]        ROOT: the study's folder (default runs/study)
# Stages, in an order that respects what each needs:
#   teacher        a seed-size SAGE (width 512, depth 6) trained for TEACHER_BUDGET seconds
#   sage-store     that teacher's pooled features and per-cell logits for every example
#   standin-store  the GR00T-shaped stand-in's pooled features and all its tokens (~74 GB at full size)
#   aN             (a) no teacher, seed N (a1, a2, ...)
#   b              (b) the stand-in's features (random weights: the control)
#   cN             (c) the trained SAGE teacher's features and per-cell logits, seed N
#   d              (d) the original plan's features student on the stand-in's tokens
#   all            every stage above in that order, seeds 1 and 2 for rows a and c
# Environment: PYTHON, PROFILE (full), DEVICE (cuda), BUDGET (seconds per row, 110),
# TEACHER_BUDGET (280), PRESET (stand-in size, full).
set -euo pipefail
stage=$1
root=${2:-runs/study}
py=${PYTHON:-python3}
profile=${PROFILE:-full_grid}
device=${DEVICE:-cuda}
preset=${PRESET:-full}
teacher=$root/teacher/checkpoints/best.pt
budget="seconds_budget=${BUDGET:-110}"   # the full_grid profile fits its schedule to the budget
student="width=192 depth=4 heads=6"   # a tenth of the teacher's encoder
train() { $py -m sage_core train --profile "$profile" --run-dir "$root/$1" --evaluate --set device="$device" "${@:2}"; }
case $stage in
  teacher) train teacher seconds_budget="${TEACHER_BUDGET:-280}" w_feat=0 ;;
  sage-store) $py -m sage_core extract --teacher sage --teacher-path "$teacher" --store "$root/store-sage" \
                --profile "$profile" --device "$device" --batch-size 64 ;;
  standin-store) $py -m sage_core extract --teacher standin --teacher-preset "$preset" --store "$root/store-standin" \
                   --profile "$profile" --device "$device" --batch-size 16 --store-tokens ;;
  a[0-9]*) train "$stage" $budget $student seed="${stage#a}" w_feat=0 ;;
  b) train b $budget $student teacher=standin teacher_preset="$preset" store_dir="$root/store-standin" w_feat=0.5 ;;
  c[0-9]*) train "$stage" $budget $student seed="${stage#c}" teacher=sage teacher_path="$teacher" \
           store_dir="$root/store-sage" w_feat=0.5 w_kd=1 ;;
  # the original plan's configuration: seed size, batch 16, lr 1e-4, the teacher's tokens as input
  d) train d $budget student=features teacher=standin teacher_preset="$preset" store_dir="$root/store-standin" \
       batch_size=16 lr=1e-4 w_feat=0.5 ;;
  all) for s in teacher sage-store standin-store a1 a2 b c1 c2 d; do bash "$0" "$s" "$root"; done ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
