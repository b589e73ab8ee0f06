#!/usr/bin/env bash
# Runs every test: sets up moto, starts it on 127.0.0.1, runs `cargo test --workspace`, then the
# offline deployment tests (infra/test.sh: SAM, CDK, drift, event patterns, RBAC).
# Arguments narrow the run to `cargo test ARGS` (for example `-p eks-remedy --test cli`).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
setup_python
start_moto
cd "$EKS_REMEDY_ROOT"
if [ $# -gt 0 ]; then
  cargo test --locked "$@"
  exit $?
fi
cargo test --locked --workspace
"$EKS_REMEDY_ROOT/infra/test.sh"
