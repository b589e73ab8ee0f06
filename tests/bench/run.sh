#!/usr/bin/env bash
# Benchmarks: builds the release functions (one job, in a target directory of their own so the
# test build stays warm), prints each function's deployment zip size, sets up the Python
# drainer's venv, starts moto on 127.0.0.1 and runs the bench binary, which prints the rest.
# Arguments go to the bench binary (for example `--rounds 5 --burst 20`).
source "$(dirname "${BASH_SOURCE[0]}")/../env.sh"
setup_python

RELEASE_TARGET="${EKS_REMEDY_RELEASE_TARGET:-$EKS_REMEDY_CACHE/target-release}"
BENCH_VENV="$EKS_REMEDY_CACHE/bench-venv"
FUNCTIONS=(node-interruption pending-pods volume-attach)

cd "$EKS_REMEDY_ROOT"
packages=()
for f in "${FUNCTIONS[@]}"; do packages+=(-p "$f"); done
CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}" CARGO_TARGET_DIR="$RELEASE_TARGET" \
  cargo build --locked --release "${packages[@]}"

echo "## Deployment zips (x86_64, release profile, stripped, zip -9)"
echo "| function | binary | zip |"
echo "|---|---|---|"
zips="$(mktemp -d)"
trap 'rm -rf "$zips"' EXIT
for f in "${FUNCTIONS[@]}"; do
  mkdir -p "$zips/$f"
  cp "$RELEASE_TARGET/release/$f" "$zips/$f/bootstrap"
  strip "$zips/$f/bootstrap"
  (cd "$zips/$f" && zip -q -9 "../$f.zip" bootstrap)
  echo "| $f | $(du -b "$zips/$f/bootstrap" | cut -f1 | numfmt --to=iec-i --suffix=B --format=%.1f) | $(du -b "$zips/$f.zip" | cut -f1 | numfmt --to=iec-i --suffix=B --format=%.1f) |"
done
echo

requirements="$EKS_REMEDY_ROOT/tests/bench/requirements.txt"
if ! cmp -s "$requirements" "$BENCH_VENV/.requirements" 2>/dev/null; then
  echo "setting up $BENCH_VENV (kubernetes, boto3)" >&2
  python3 -m venv "$BENCH_VENV"
  "$BENCH_VENV/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$BENCH_VENV/.requirements"
fi

start_moto
cargo run --locked --quiet -p eks-remedy-tests --bin bench -- \
  --functions "$RELEASE_TARGET/release" \
  --python "$BENCH_VENV/bin/python" \
  --drainer "$EKS_REMEDY_ROOT/tests/bench/drainer.py" \
  --kubectl "${KUBECTL:-$(command -v kubectl)}" \
  "$@"
