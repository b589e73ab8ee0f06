#!/usr/bin/env bash
# Runs every test of the workspace: sets up moto, starts it on 127.0.0.1, runs `cargo test`.
# Extra arguments go to `cargo test` (for example a test name filter).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
setup_python
start_moto
cd "$EKS_REMEDY_ROOT"
cargo test --workspace --locked "$@"
