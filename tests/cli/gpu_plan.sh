#!/usr/bin/env bash
# --devices on the real default model: malformed lists and impossible plans are refused at start-up with one clear
# line naming the stage and the device; a stage on a CUDA device where there is none is refused with the reason
# (never a crash or a hang); --devices cpu (flag, environment, config file) and head groups on CPU threads give the texts
# of the default plan. Where a CUDA device exists, every stage on it, a GPU/CPU pipeline, two GPU stages and head groups
# split between the GPU and the CPU must give the CPU's greedy texts.
# Usage: gpu_plan.sh TROUPE_BINARY SOURCE_DIR
set -u
troupe=$(realpath "$1")
model=$(realpath "$2")/models/SmolLM2-135M-Instruct.Q4_1.gguf
source "$(dirname "${BASH_SOURCE[0]}")/lib/check.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp" || exit 1
cat >in.jsonl <<'JSONL'
{"id": 1, "prompt": "Once upon a time", "temperature": 0}
{"id": 2, "prompt": "The quick brown fox", "temperature": 0}
{"id": 3, "prompt": "1, 2, 3, 4,", "temperature": 0}
JSONL
batch() {  # batch OUT ARGS...: greedy answers of in.jsonl into OUT; stderr in OUT.err
  local out=$1
  shift
  rm -f "$out"
  timeout 120 "$troupe" batch --model "$model" --in in.jsonl --out "$out" -n 12 --threads 2 "$@" 2>"$out.err"
}
refused() {  # refused TEXT ARGS...: exit 1, nothing written, and TEXT in the one error line
  local text=$1
  shift
  batch bad.jsonl "$@"
  local rc=$?
  [ $rc -eq 1 ] && [ ! -s bad.jsonl ] && grep -q -- "$text" bad.jsonl.err && ! grep -qiE 'terminate|segfault|abort' bad.jsonl.err ||
    { echo "  (exit $rc) $(tail -2 bad.jsonl.err)"; return 1; }
}

check "the default plan answers" batch ref.jsonl
check "three answers" [ "$(grep -c '"text"' ref.jsonl)" -eq 3 ]
check "--devices cpu gives the same texts" batch cpu.jsonl --devices cpu
check "  equal" cmp -s ref.jsonl cpu.jsonl
check "--pp 2 --devices cpu,cpu gives the same texts" batch cpu2.jsonl --pp 2 --devices cpu,cpu
check "  equal" cmp -s ref.jsonl cpu2.jsonl
check "TROUPE_DEVICES=cpu" env TROUPE_DEVICES=cpu bash -c "$(declare -f batch); troupe='$troupe' model='$model' batch env.jsonl"
check "  equal" cmp -s ref.jsonl env.jsonl
echo '{"engine": {"devices": "cpu"}}' >cfg.json
check "config \"devices\": \"cpu\"" batch cfg.jsonl --config cfg.json
check "  equal" cmp -s ref.jsonl cfg.jsonl
check "--tp 3 --devices cpu+cpu+cpu (head groups on CPU threads)" batch groups.jsonl --tp 3 --devices cpu+cpu+cpu
check "  equal" cmp -s ref.jsonl groups.jsonl

check "a malformed device is refused" refused "expected cpu, cuda or cuda:N" --devices gpu0
check "an empty item is refused" refused "expected cpu, cuda or cuda:N" --devices cuda:0,,cpu
check "a negative ordinal is refused" refused "expected cpu, cuda or cuda:N" --devices cuda:-1
check "a list that does not match the stages is refused" refused "for 2 pipeline stage(s)" --pp 2 --devices cpu,cpu,cpu
check "head-group devices that do not match tp are refused" refused "3 head-group devices for tp 2" --tp 2 --devices cpu+cpu+cpu
check "an empty head group is refused" refused "expected cpu, cuda or cuda:N" --tp 2 --devices cuda:0+
check "TROUPE_DEVICES is checked too" env TROUPE_DEVICES=tpu bash -c "$(declare -f batch refused); troupe='$troupe' model='$model' refused 'TROUPE_DEVICES'"

if "$troupe" batch --help 2>&1 | grep -q -- --devices && [ "$(nvidia-smi -L 2>/dev/null | grep -c GPU)" -gt 0 ]; then
  echo "a CUDA device is present: GPU stages against the CPU"
  check "every stage on cuda:0" batch gpu.jsonl --devices cuda:0
  check "  the CPU's greedy texts" cmp -s ref.jsonl gpu.jsonl
  check "stage 0 on cuda:0, stage 1 on the CPU" batch mixed.jsonl --pp 2 --devices cuda:0,cpu
  check "  the CPU's greedy texts" cmp -s ref.jsonl mixed.jsonl
  check "two GPU stages (device to device)" batch d2d.jsonl --pp 2 --devices cuda:0
  check "  the CPU's greedy texts" cmp -s ref.jsonl d2d.jsonl
  check "head groups on the GPU and a CPU thread" batch hg.jsonl --tp 3 --devices cuda:0+cpu+cuda:0
  check "  the CPU's greedy texts" cmp -s ref.jsonl hg.jsonl
  check "a device that does not exist is refused" refused "cuda:99" --devices cuda:99
  check "the exact precision is refused on a GPU" refused "fast precision only" --devices cuda:0 --precision exact
else
  # Without a device (or without CUDA in this build) the refusal names the stage, the device and why.
  check "cuda:0 without a device is refused with the reason" refused "stage 0 on cuda:0" --devices cuda:0
  check "  and so is a GPU stage in a pipeline" refused "stage 1 on cuda:1" --pp 2 --devices cpu,cuda:1
  check "  and a GPU head group" refused "stage 0 group 1 on cuda:0" --tp 3 --devices cpu+cuda:0+cpu
  echo "no CUDA device here: GPU stages against the CPU not run (tests/gpu/device-check.sh runs them on a GPU machine)"
fi

echo "gpu_plan: $passes passed, $failures failed"
[ $failures -eq 0 ]
