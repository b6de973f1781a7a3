#!/usr/bin/env bash
# The distillation study with a sequence teacher (README "Distillation study"): every student row
# trains on the same data (the `full` profile's: mdlARC's pairs, up to 80 versions each) for the
# same wall-clock budget, then writes and votes the evaluation tasks' test inputs.
#   scripts/sequence_study.sh STAGE [ROOT]     ROOT: the study's folder (default runs/sequence-study)
# Stages, in an order that respects what each needs:
#   teacher        the `full` profile's sequence student (76M), as the profile sets it (345 s) or for
#                  TEACHER_BUDGET seconds, scored: its checkpoint and its voted answers
#                  (predictions.json) teach the rows below
#   warm           a throwaway row (WARM_BUDGET seconds, 40; not scored) under $TMPDIR, not ROOT:
#                  the first student on a machine compiles its kernels cold, inside its budget;
#                  run it first on every machine so that the rows' seeds differ only by seed
#   standin-store  the GR00T-shaped stand-in's pooled features of every pair (row e)
#   aN             (a) the small sequence student alone, seed N (a1, a2, ...)
#   bN             (b) the same with the teacher's per-token distributions (w_kd, teacher-forced)
#   cN             (c) (b) plus the teacher's voted answers to the evaluation test inputs as
#                  training pairs (self-training on inputs only: no test output is read)
#   d              (d) the grid student (profile full_grid) with the teacher's voted answers to the
#                  test inputs as extra training pairs; its training pairs keep their own outputs
#   eN             (e) the control: (a) with the stand-in's pooled features (w_feat), seed N
#   cost           a cost table (COST, default cost.json): every row's best checkpoint still
#                  present as served, the teacher's, and the stand-in at its input shape, one
#                  after another in one process; rows trained on a later machine get their own
#                  table (COST=cost-2.json), since the teacher's checkpoint is not kept
#   all            every stage above in that order, seeds 1 and 2 for rows a, b, c and e
# Then `python -m sage_core study ROOT --out figures/sequence_study.png`: the tables and the figure.
# Stages that need nothing from each other may run at once, one GPU each
# (CUDA_VISIBLE_DEVICES=i scripts/sequence_study.sh a1 & ...). The original plan's features
# student is scripts/study.sh's row d. Environment: PYTHON, PROFILE (full), GRID_PROFILE
# (full_grid), DEVICE (cuda), BUDGET (seconds per student row, 345), EPOCHS (instead: epochs per
# sequence row, a, b, c and e; row d keeps BUDGET), TEACHER_BUDGET (the profile's),
# PRESET (stand-in size, full), STUDENT (the small student, a tenth of the teacher's block
# parameters), TEACHER (settings of the teacher beyond its profile), EXTRA (settings for every
# row, e.g. max_tasks=3 to try it on a few tasks).
set -euo pipefail
stage=$1
root=${2:-runs/sequence-study}
py=${PYTHON:-python3}
profile=${PROFILE:-full}
device=${DEVICE:-cuda}
preset=${PRESET:-full}
teacher=$root/teacher
student=${STUDENT:-width=256 depth=6 heads=4}   # 6.3M in its blocks against the teacher's 75.5M
fit() { echo "seconds_budget=$1 schedule_seconds=$(( $1 * 92 / 100 ))"; }   # the schedule ends before the budget
train() {   # train ROW PROFILE SETTINGS...
  # shellcheck disable=SC2086
  $py -m sage_core train --profile "$2" --run-dir "$root/$1" ${evaluate---evaluate} --set device="$device" ${EXTRA:-} "${@:3}"
}
# EPOCHS: rows a, b, c and e span that many epochs (the same steps each) instead of the budget,
# so that neither the host's speed nor a teacher's forward decides how far a row gets
span() { if [ -n "${EPOCHS:-}" ]; then echo "schedule=epochs epochs=$EPOCHS seconds_budget=0"; else fit "${BUDGET:-345}"; fi; }
row() { train "$1" "$profile" $(span) $student seed="$2" "${@:3}"; }
taught="teacher=sage teacher_path=$teacher/checkpoints/best.pt w_kd=1"
case $stage in
  # shellcheck disable=SC2046,SC2086
  teacher) train teacher "$profile" ${TEACHER_BUDGET:+$(fit "$TEACHER_BUDGET")} ${TEACHER:-} ;;
  standin-store) $py -m sage_core extract --teacher standin --teacher-preset "$preset" --store "$root/store-standin" \
                   --profile "$profile" --device "$device" --batch-size 16 --set ${EXTRA:-} ;;
  warm) root=${TMPDIR:-/tmp}/sage-study-warm evaluate='' BUDGET=${WARM_BUDGET:-40} EPOCHS=''; rm -rf "$root"; row warm 0 ;;
  a[0-9]*) row "$stage" "${stage#a}" ;;
  # shellcheck disable=SC2086
  b[0-9]*) row "$stage" "${stage#b}" $taught ;;
  # shellcheck disable=SC2086
  c[0-9]*) row "$stage" "${stage#c}" $taught self_train="$teacher/predictions.json" ;;
  # shellcheck disable=SC2046
  d) train d "${GRID_PROFILE:-full_grid}" $(fit "${BUDGET:-345}") schedule=budget w_feat=0 self_train="$teacher/predictions.json" ;;
  e[0-9]*) row "$stage" "${stage#e}" teacher=standin teacher_preset="$preset" store_dir="$root/store-standin" w_feat=0.5 ;;
  cost) $py -m sage_core cost --out "$root/${COST:-cost.json}" --device "$device" --preset "$preset" \
          "$root"/*/checkpoints/best.pt ;;
  all) for s in warm teacher standin-store a1 a2 b1 b2 c1 c2 d e1 e2 cost; do bash "$0" "$s" "$root"; done ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
