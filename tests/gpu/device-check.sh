#!/usr/bin/env bash
# The GPU device check: one script that finishes within 5 minutes on one H100/H200 and prints a summary.
#   1. every CUDA kernel against its CPU reference on random inputs (normalised error)
#   2. synthetic models made here (troupe-gpu-check synth: the default model's shape and a 1B shape, Q4_1): the whole
#      forward pass on the GPU (one stage, and two stages chained) against the CPU path: max logit difference,
#      greedy tokens equal
#   3. speed: prefill tokens/s, decode tokens/s at batch 1, 16 and 64, batch 1 as a share of HBM bandwidth
#   4. when the carried `troupe` runs here: `troupe batch` with --devices cpu, cuda:0 and cuda:0,cpu: equal texts;
#      `troupe bench --devices cuda:0`: the engine's prefill and decode tokens/s through the actors
#
#   tests/gpu/device-check.sh [BIN_DIR]
# BIN_DIR (default .gpu-carry, made by scripts/gpu-carry.sh, else build/) holds troupe-gpu-check and optionally troupe
# with lib/ of the shared libraries it needs. The GPU machine has CUDA but no Debian packages and no network, so
# models are made there and binaries are built here and carried. TROUPE_HBM_GBS: the device's memory bandwidth in GB/s
# for the bandwidth share (default 4800, an H200; an H100 SXM has 3350). The summary also goes to
# $OUT/device-check-summary.txt (./ when OUT is not set). Exit status: 0 every check passed, 1 one failed, 77 no CUDA
# device. DEVICE_CHECK_DRY=1 goes on past the steps that need a device (a dry run where there is none: the synthetic
# models, the engine's refusals).
set -uo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-.gpu-carry}
[ -x "$bin/troupe-gpu-check" ] || bin=build
check=$bin/troupe-gpu-check
work=$(mktemp -d /tmp/troupe-device-check.XXXXXX)
trap 'rm -rf "$work"' EXIT  # the models are large
out=${OUT:-$work}
[ "$out" = "$work" ] && out=.  # no $OUT: the summary stays here
summary=$out/device-check-summary.txt
: >"$summary"
export LD_LIBRARY_PATH=$PWD/$bin/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
t_start=$(date +%s)
failed=0
skipped=0

say() { echo "$@" | tee -a "$summary"; }
# Runs a step with a time limit; its output goes to the log, the lines the summary wants to the summary.
step() {
  local name=$1 limit=$2
  shift 2
  say "== $name"
  local t0=$(date +%s) rc
  timeout "$limit" "$@" >"$work/$name.log" 2>&1
  rc=$?
  grep -Ev '^\s*$' "$work/$name.log" | tee -a "$summary"
  say "-- $name: exit $rc in $(($(date +%s) - t0)) s"
  if [ $rc -eq 77 ]; then
    if [ -n "${DEVICE_CHECK_DRY:-}" ]; then
      say "   (no CUDA device: skipped; DEVICE_CHECK_DRY goes on with the rest)"
      skipped=1
      return 0
    fi
    say "no CUDA device: the device check is skipped"
    exit 77
  fi
  [ $rc -eq 0 ] || failed=1
  return $rc
}

say "device check at $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader |
  tee -a "$summary"
[ -x "$check" ] || { say "no troupe-gpu-check in $bin or build/: run scripts/gpu-carry.sh first"; exit 1; }

step kernels 90 "$check" kernels
for shape in smollm2-135m llama-1b; do
  model=$work/$shape.gguf
  step "synth-$shape" 120 "$check" synth "$shape" q4_1 "$model" || continue
  # the CPU reference gets every core; a 1B shape decodes fewer tokens to stay inside the lease
  tokens=32
  [ "$shape" = llama-1b ] && tokens=12
  step "forward-$shape" 150 "$check" forward "$model" "$tokens"
  step "bench-$shape" 120 "$check" bench "$model"
done

# The engine itself, when the carried troupe runs on this machine: `troupe batch` (greedy) gives the same texts with
# every stage on the CPU, every stage on the GPU, and the first of two stages on the GPU and the second on the CPU.
if [ -x "$bin/troupe" ] && "$bin/troupe" --help >/dev/null 2>&1; then
  model=$work/smollm2-135m.gguf
  for p in "The quick brown fox" "Once upon a time" "1, 2, 3, 4," "GPU shards"; do
    printf '{"prompt": "%s", "max_tokens": 24, "temperature": 0}\n' "$p"
  done >"$work/prompts.jsonl"
  say "== engine: troupe batch, 4 greedy prompts of 24 tokens"
  for devices in cpu cuda:0 cuda:0,cpu; do
    pp=1
    [ "$devices" = cuda:0,cpu ] && pp=2
    t0=$(date +%s)
    timeout 90 "$bin/troupe" batch --model "$model" --in "$work/prompts.jsonl" --out "$work/out-$devices.jsonl" \
      --pp $pp --devices $devices --threads 4 >"$work/engine-$devices.log" 2>&1
    rc=$?
    say "  --devices $devices --pp $pp: exit $rc in $(($(date +%s) - t0)) s, $(grep -c '"text"' "$work/out-$devices.jsonl" 2>/dev/null) answers"
    if [ $skipped -eq 1 ] && [ "$devices" != cpu ]; then  # dry run: refused, with the reason
      tail -1 "$work/engine-$devices.log" | tee -a "$summary"
      [ $rc -eq 1 ] && grep -q "cuda" "$work/engine-$devices.log" || failed=1
      continue
    fi
    [ $rc -eq 0 ] || { failed=1; tail -5 "$work/engine-$devices.log" | tee -a "$summary"; }
    if [ "$devices" != cpu ] && ! cmp -s <(sort "$work/out-cpu.jsonl") <(sort "$work/out-$devices.jsonl"); then
      say "  texts differ from the CPU's"
      failed=1
    fi
  done
  # the engine's own speed through the actors (troupe bench, as llama-bench), every stage on the GPU
  if [ $skipped -eq 0 ]; then
    say "== engine: troupe bench --devices cuda:0 (pp512, tg128)"
    timeout 120 "$bin/troupe" bench --model "$model" --devices cuda:0 -p 512 -n 128 -r 3 --threads 4 \
      >"$work/engine-bench.log" 2>&1 || failed=1
    grep -E '^\|' "$work/engine-bench.log" | tee -a "$summary"
  fi
else
  say "== engine: skipped (no runnable troupe in $bin)"
fi

say "device check: $([ $failed -eq 0 ] && echo PASSED || echo FAILED)$([ $skipped -eq 1 ] && echo ' (dry run: device steps skipped)') in $(($(date +%s) - t_start)) s"
[ $failed -eq 0 ] && [ $skipped -eq 1 ] && exit 77
exit $failed
