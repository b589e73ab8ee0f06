#!/usr/bin/env bash
# Builds the Lambda functions for provided.al2023 on x86_64 and zips each binary as `bootstrap`
# into $CARGO_TARGET_DIR/lambda/<function>/bootstrap.zip, then points infra/dist at that folder:
# the SAM template (CodeUri) and the CDK app (default AssetDir) read the zips from there.
#
#   infra/build.sh                      # all three functions
#   infra/build.sh node-interruption    # only the ones named
#
# Plain `cargo build --release`: the machine's glibc target matches Amazon Linux 2023 (glibc
# 2.34), so cargo-lambda is not needed. arm64 cannot be built here (no aarch64 standard library).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${EKS_REMEDY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/eks-remedy}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
FUNCTIONS=(node-interruption pending-pods volume-attach)
if [ $# -gt 0 ]; then FUNCTIONS=("$@"); fi

for function in "${FUNCTIONS[@]}"; do
  if [ ! -f "$ROOT/functions/$function/Cargo.toml" ]; then
    echo "build: no crate functions/$function" >&2
    exit 2
  fi
done

packages=()
for function in "${FUNCTIONS[@]}"; do packages+=(-p "$function"); done
echo "build: cargo build --release ${packages[*]} (target $CARGO_TARGET_DIR)" >&2
(cd "$ROOT" && cargo build --locked --release "${packages[@]}")

for function in "${FUNCTIONS[@]}"; do
  binary="$CARGO_TARGET_DIR/release/$function"
  out="$CARGO_TARGET_DIR/lambda/$function"
  mkdir -p "$out"
  # Symbols are not needed at run time and double the upload; the build keeps its own copy.
  stripped="$(mktemp)"
  strip -o "$stripped" "$binary" 2>/dev/null || cp "$binary" "$stripped"
  # A fixed timestamp and mode: the zip, and so the deployed code hash, changes only with the binary.
  python3 - "$stripped" "$out/bootstrap.zip" <<'PY'
import sys, zipfile
binary, archive = sys.argv[1], sys.argv[2]
entry = zipfile.ZipInfo("bootstrap", date_time=(1980, 1, 1, 0, 0, 0))
entry.external_attr = 0o100755 << 16
entry.compress_type = zipfile.ZIP_DEFLATED
with open(binary, "rb") as source, zipfile.ZipFile(archive, "w") as target:
    target.writestr(entry, source.read(), compresslevel=9)
PY
  rm -f "$stripped"
  echo "build: $out/bootstrap.zip ($(du -h "$out/bootstrap.zip" | cut -f1))" >&2
done

ln -sfn "$CARGO_TARGET_DIR/lambda" "$ROOT/infra/dist"
echo "build: infra/dist -> $CARGO_TARGET_DIR/lambda" >&2
