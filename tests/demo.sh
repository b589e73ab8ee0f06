#!/usr/bin/env bash
# The demo: sets up moto, starts it on 127.0.0.1 and runs the demo program (no AWS account).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
setup_python
start_moto
cd "$EKS_REMEDY_ROOT"
cargo run --quiet --locked -p eks-remedy-tests --bin demo
