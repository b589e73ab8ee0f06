#!/usr/bin/env bash
# Runs every test of the workspace: sets up moto, starts it on 127.0.0.1, runs `cargo test`.
# Arguments replace the default `--workspace` (for example `-p eks-remedy --test cli`).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
setup_python
start_moto
cd "$EKS_REMEDY_ROOT"
if [ $# -eq 0 ]; then set -- --workspace; fi
cargo test --locked "$@"
