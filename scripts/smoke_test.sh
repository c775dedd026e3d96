#!/usr/bin/env bash
# Smoke test of an snn-runner installation (the container image, or a host
# install): train and benchmark a tiny network with every available
# implementation, validate the HDF5 results, and print one verdict line:
#   SMOKE TEST: PASS            exit 0
#   SMOKE TEST: FAIL (reason)   exit 1
# It writes only into a fresh temporary folder (under $TMPDIR, else /tmp),
# removed at the end unless SMOKE_KEEP=1, so it runs in a read-only image.
# About 30-50 s on a 2-core CPU, most of it TensorFlow start-up.
#
#   scripts/smoke_test.sh                          # snn-runner from PATH
#   SNN_RUNNER=.venv/bin/snn-runner scripts/smoke_test.sh
#   singularity test IMAGE.sif                     # %test runs this
#   scripts/smoke_test.sh --backend ipu            # on IPUs (the IPU image's %test, when it sees IPUs)
# With --backend ipu the tiny job trains with train.backend: ipu (the job-file
# form of `train --backend ipu`) and needs tensorflow-ipu, the Poplar SDK and
# the built IPU ops; the bench part is left out, as `snn-runner bench` times
# the CPU backend only.
set -uo pipefail

runner=${SNN_RUNNER:-snn-runner}
start=$SECONDS
work=""
backend=cpu
case "${1-}" in
  "") ;;
  --backend) backend=${2-} ;;
  --backend=*) backend=${1#--backend=} ;;
  *) echo "usage: $0 [--backend cpu|ipu]" >&2; exit 2 ;;
esac
case "$backend" in
  cpu|ipu) ;;
  *) echo "$0: --backend must be cpu or ipu, not '$backend'" >&2; exit 2 ;;
esac

verdict_fail() {
  echo "SMOKE TEST: FAIL ($*) after $((SECONDS - start)) s"
  [ -n "$work" ] && [ "${SMOKE_KEEP:-0}" = 1 ] && echo "smoke: kept $work"
  exit 1
}
step() { echo "smoke: $*"; }
# Run a command with its output in LOG; on failure show the log and fail with
# the command's own exit code in the reason.
logged() {
  local log=$1 what=$2 rc=0
  shift 2
  "$@" > "$log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    cat "$log"
    verdict_fail "$what exited $rc"
  fi
}

command -v "$runner" >/dev/null 2>&1 || verdict_fail "snn-runner not found (looked for '$runner'; set SNN_RUNNER)"
# The interpreter that runs snn-runner, to ask it about the compiled ops
# without importing TensorFlow.
python=$(dirname "$(command -v "$runner")")/python
[ -x "$python" ] || python=python3

work=$(mktemp -d "${TMPDIR:-/tmp}/snn-smoke.XXXXXX") || verdict_fail "cannot create a temporary folder under ${TMPDIR:-/tmp}"
if [ "${SMOKE_KEEP:-0}" != 1 ]; then trap 'rm -rf "$work"' EXIT; fi
cd "$work" || verdict_fail "cannot enter $work"

if [ "$backend" = ipu ]; then
  # require_ipu checks tensorflow-ipu, the SDK and the built Poplar ops, and says which is missing
  ops=$("$python" -c 'from snn_runner.ipu import require_ipu; print(require_ipu().lib_dir)' 2>&1) \
    || verdict_fail "IPU stack not usable: $(printf '%s\n' "$ops" | tail -n 1)"
  impls=(dense sparse_ops sparse_layer)
  step "IPU ops at $ops"
else
  ops=$("$python" -c 'from snn_runner.sparse import library; print(library.library_path() if library.available() else "")' 2>&1) \
    || verdict_fail "cannot import snn_runner with $python: $ops"
  if [ -n "$ops" ]; then
    impls=(dense sparse_ops sparse_layer)
    step "compiled ops at $ops"
  elif [ "${SNN_RUNNER_INSTALLED:-}" = 1 ] && [ "${SNN_RUNNER_IMAGE_CPU_OPS:-1}" = 0 ]; then
    # the IPU image: its TensorFlow 2.6 cannot build the CPU ops (docs/ipu.md)
    impls=(dense)
    step "this image ships no compiled CPU ops (SNN_RUNNER_IMAGE_CPU_OPS=0): testing dense only on the CPU"
  elif [ "${SNN_RUNNER_INSTALLED:-}" = 1 ]; then
    # An image is built with its ops; without them it is a broken build.
    verdict_fail "compiled ops missing in this image (snn_runner/sparse/_lib/libsnn_ops.so or \$SNN_RUNNER_OPS_LIB)"
  else
    impls=(dense)
    step "compiled ops not built here: testing dense only (build them with scripts/build-ops)"
  fi
fi
step "implementations: ${impls[*]} on backend $backend; working in $work"

# One job file, one process for all the training runs: TensorFlow's start-up
# (several seconds) is paid once. Small randman data keeps each epoch short.
list=$(IFS=,; echo "${impls[*]}")
cat > smoke.yaml <<EOF
name: smoke
kind: train
output: results
model:
  hidden: [32]
  max_activity: 0.2
  weight_scale: 3.0
data:
  dataset: randman
  channels: 20
  classes: 3
  time_steps: 20
  train_samples_per_class: 40
  test_samples_per_class: 10
train:
  epochs: 1
  batch_size: 20
  backend: ${backend}
sweep:
  grid:
    model.implementation: [${list}]
EOF

step "train: ${impls[*]} (1 epoch, hidden 32, T=20)"
logged train.log "snn-runner train" "$runner" train smoke.yaml
grep -E '^(epoch|final test accuracy)' train.log | sed 's/^/  /'
n_acc=$(grep -c '^final test accuracy' train.log)
[ "$n_acc" -eq "${#impls[@]}" ] || { cat train.log; verdict_fail "expected ${#impls[@]} final accuracies, got $n_acc"; }

shopt -s nullglob
files=(results/*.h5)
[ "${#files[@]}" -eq "${#impls[@]}" ] || verdict_fail "expected ${#impls[@]} result files, found ${#files[@]}"
for f in "${files[@]}"; do
  logged inspect.log "snn-runner inspect $f" "$runner" inspect "$f"
  impl=$(sed -n 's/^implementation: //p' inspect.log)
  ran_on=$(sed -n 's/^backend: //p' inspect.log)
  # the record must name the backend asked for: a silent fall-back would show here
  [ "$ran_on" = "$backend" ] || verdict_fail "$f records backend '$ran_on', expected '$backend'"
  step "valid: $f ($impl on $ran_on)"
done
# The validator must also say no: a truncated copy has to be rejected.
head -c 2048 "${files[0]}" > truncated.h5
if "$runner" inspect truncated.h5 > inspect.log 2>&1; then
  verdict_fail "snn-runner inspect accepted a truncated file"
fi
step "a truncated file is rejected (inspect exit != 0)"

if [ "$backend" = ipu ]; then
  echo "SMOKE TEST: PASS (${impls[*]} on the IPU; bench not run; $((SECONDS - start)) s)"
  exit 0
fi

bench_args=()
for i in "${impls[@]}"; do bench_args+=(--implementation "$i"); done
step "bench: tiny network, ${impls[*]}, max activity 0.1, 5 steps"
logged bench.log "snn-runner bench" \
  "$runner" bench --network tiny "${bench_args[@]}" --max-activity 0.1 --steps 5 --warmup 0 --json bench.json
grep '^|' bench.log | sed 's/^/  /'
got=$("$python" -c 'import json, sys; recs = json.load(open("bench.json")); print(" ".join(sorted({r["implementation"] for r in recs if r.get("step_ms_median", 0) > 0})))' 2>&1) \
  || verdict_fail "bench.json unreadable: $got"
want=$(printf '%s\n' "${impls[@]}" | sort | tr '\n' ' ' | sed 's/ $//')
[ "$got" = "$want" ] || verdict_fail "bench timed '$got', expected '$want'"

echo "SMOKE TEST: PASS (${impls[*]}; $((SECONDS - start)) s)"
exit 0
