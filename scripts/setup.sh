#!/usr/bin/env bash
# Installs what Troupe needs on a Debian 12 machine (as root) and is a no-op when it is all there.
#   scripts/setup.sh          apt packages for building and testing
#   scripts/setup.sh --ref    also the Python reference tools used to regenerate golden files
#   scripts/setup.sh --bench  also what scripts/compare.sh needs: clang-16 and its OpenMP (llama.cpp's fastest build
#                             here), matplotlib (the chart), GNU time (peak memory)
set -euo pipefail
ref=0
bench=0
for arg in "$@"; do
  case $arg in
    --ref) ref=1 ;;
    --bench) bench=1 ;;
    *) echo "setup: unknown argument $arg (known: --ref, --bench)" >&2; exit 2 ;;
  esac
done

# pip_install PACKAGE...: into the python3 the tests run. Debian 12's own python3 is "externally managed" (PEP 668)
# and its pip refuses to install without --break-system-packages; the variable says the same to pips that know it
# and means nothing to those that do not (a virtual environment or pyenv python).
pip_install() {
  PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --no-cache-dir "$@"
}

apt_packages=(
  cmake g++ make pkg-config git ca-certificates unzip python3 python3-pip
  libcaf-dev                       # actors (core, io middleman, openssl)
  libboost-dev libboost-system-dev # Asio, Beast
  nlohmann-json3-dev               # JSON in http/ and config/
  doctest-dev                      # unit tests
  libpcre2-dev                     # Unicode regex for the pre-tokenizer (\p{L}, \p{N})
  libspdlog-dev libfmt-dev         # logging
  libcli11-dev                     # command-line parsing
  clang libclang-rt-14-dev         # libFuzzer targets, sanitizers
  curl jq                          # HTTP tests (tests/cli/http_curl.sh)
  libbenchmark-dev                 # kernel microbenchmarks (bench/kernels_bench.cpp)
)
if [ $bench -eq 1 ]; then
  apt_packages+=(clang-16 libomp-16-dev python3-matplotlib time)  # scripts/compare.sh
fi

missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The official OpenAI client, which the HTTP tests drive troupe serve with (tests/http/).
python3 -c 'import openai' 2>/dev/null || { echo "setup: installing openai (pip)"; pip_install 'openai>=1'; }

if [ $ref -eq 1 ]; then
  # Reference implementations for the golden files (not needed by CI, which reads the committed goldens).
  # llama.cpp is built for the instruction sets this CPU has, named one by one: gcc 12 with -march=native
  # miscompiles llama.cpp's AMX path on CPUs that have AMX.
  flags=$(grep -m1 '^flags' /proc/cpuinfo)
  has() { [[ " $flags " == *" $1 "* ]] && echo ON || echo OFF; }
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=$(has avx) -DGGML_AVX2=$(has avx2) -DGGML_FMA=$(has fma) -DGGML_F16C=$(has f16c)"
  CMAKE_ARGS+=" -DGGML_AVX512=$(has avx512f) -DGGML_AVX512_VNNI=$(has avx512_vnni) -DGGML_AVX512_BF16=$(has avx512_bf16)"
  CMAKE_ARGS+=" -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
  export CMAKE_ARGS
  pip_install llama-cpp-python==0.3.36 jinja2 gguf numpy
fi
