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
#   dN             (d) the grid student (profile full_grid), seed N, with the teacher's voted answers
#                  to the test inputs as extra training pairs; its training pairs keep their own
#                  outputs
#   eN             (e) the control: (a) with the stand-in's pooled features (w_feat), seed N
#   cost           a cost table (COST, default cost.json): the best checkpoints of COST_RUNS (run
#                  names; default every run still holding one) as served, then the stand-in at its
#                  input shape, one after another in one process
#   all            every stage above in that order, seeds 1 and 2 for rows a, b, c, d and e
#   hold           the whole study on one GPU, stages that need nothing from each other at once,
#                  each its own process (logs in ROOT/logs): the teacher, then b and c beside d's
#                  seeds one after another; the stand-in's store, then e; a; then the cost table
#                  alone over the teacher and each row's first seed. Rows that share a GPU must
#                  have their lengths pinned, not timed: it needs EPOCHS and GRID_EPOCHS (and the
#                  teacher's TEACHER="schedule=epochs epochs=N seconds_budget=0"), and training
#                  minutes measured beside other rows overstate a row's cost. On one H100 the
#                  teacher, the store and four small rows kept the GPU 95% busy (2026-12-06)
# Then `python -m sage_core study ROOT --out figures/sequence_study.png`: the tables and the figure.
# Stages that need nothing from each other may run at once, one GPU each
# (CUDA_VISIBLE_DEVICES=i scripts/sequence_study.sh a1 & ...), or share one (hold). The original
# plan's features student is scripts/study.sh's row d. Environment: PYTHON, PROFILE (full),
# GRID_PROFILE (full_grid), DEVICE (cuda), BUDGET (seconds per student row, 345), EPOCHS (instead:
# epochs per sequence row, a, b, c and e), GRID_EPOCHS (instead: epochs of row d), SEEDS (hold's,
# "1 2"), THREADS (hold's CPU threads per stage, 2), TEACHER_BUDGET (the profile's),
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
fit() { echo "schedule=budget seconds_budget=$1 schedule_seconds=$(( $1 * 92 / 100 ))"; }   # the schedule ends before the budget
train() {   # train ROW PROFILE SETTINGS...
  # shellcheck disable=SC2086
  $py -m sage_core train --profile "$2" --run-dir "$root/$1" ${evaluate---evaluate} --set device="$device" ${EXTRA:-} "${@:3}"
}
# span [EPOCHS]: that many epochs (the same steps for every seed) or, without, the budget: with
# epochs, neither the host's speed, nor a teacher's forward, nor a neighbour decides how far a row gets
span() { if [ -n "${1:-}" ]; then echo "schedule=epochs epochs=$1 seconds_budget=0"; else fit "${BUDGET:-345}"; fi; }
row() { train "$1" "$profile" $(span "${EPOCHS:-}") $student seed="$2" "${@:3}"; }
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
  d[0-9]*) train "$stage" "${GRID_PROFILE:-full_grid}" $(span "${GRID_EPOCHS:-}") seed="${stage#d}" w_feat=0 self_train="$teacher/predictions.json" ;;
  e[0-9]*) row "$stage" "${stage#e}" teacher=standin teacher_preset="$preset" store_dir="$root/store-standin" w_feat=0.5 ;;
  cost) checkpoints=("$root"/*/checkpoints/best.pt)
        if [ -n "${COST_RUNS:-}" ]; then checkpoints=(); for r in $COST_RUNS; do checkpoints+=("$root/$r/checkpoints/best.pt"); done; fi
        $py -m sage_core cost --out "$root/${COST:-cost.json}" --device "$device" --preset "$preset" "${checkpoints[@]}" ;;
  all) for s in warm teacher standin-store a1 a2 b1 b2 c1 c2 d1 d2 e1 e2 cost; do bash "$0" "$s" "$root"; done ;;
  hold)
    : "${EPOCHS:?hold pins the rows by EPOCHS}" "${GRID_EPOCHS:?hold pins row d by GRID_EPOCHS}"
    mkdir -p "$root/logs"
    seeds=${SEEDS:-1 2}
    # each STAGE...: the stages at once, each its own process with a few CPU threads; fails if one does
    each() {
      local s pids=() failed=0
      for s; do OMP_NUM_THREADS=${THREADS:-2} bash "$0" "$s" "$root" > "$root/logs/$s.log" 2>&1 & pids+=($!); done
      for p in "${pids[@]}"; do wait "$p" || failed=1; done
      return $failed
    }
    on() { local r s out=(); for r; do for s in $seeds; do out+=("$r$s"); done; done; echo "${out[@]}"; }
    # a grid student of row d takes 34-39 GiB of an H100's 79 (batch 256, compiled): one at a time,
    # beside rows b and c
    grids() { local s; for s; do each "$s" || return 1; done; }
    # shellcheck disable=SC2046
    (each teacher && { grids $(on d) & g=$!; bc=0; each $(on b c) || bc=1; wait $g && [ $bc = 0 ]; }) & taught=$!
    # shellcheck disable=SC2046
    (each standin-store && each $(on e)) & control=$!
    # shellcheck disable=SC2046
    failed=0; each $(on a) || failed=1
    wait $taught || failed=1; wait $control || failed=1
    [ $failed = 0 ] || { echo "a stage failed: see $root/logs" >&2; exit 1; }
    COST_RUNS="teacher $(seeds=${seeds%% *} on a b c d e)" bash "$0" cost "$root" ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
