# Sourced by the test, demo and CI scripts: one place for the cache, the Python venv with moto,
# the loopback-only AWS settings and the moto server's lifetime.
#
# Nothing here may reach a real AWS host or the instance metadata address: the SDK gets fake
# credentials, an explicit 127.0.0.1 endpoint and IMDS disabled.

set -euo pipefail

EKS_REMEDY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EKS_REMEDY_CACHE="${EKS_REMEDY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/eks-remedy}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$EKS_REMEDY_CACHE/target}"
VENV="$EKS_REMEDY_CACHE/venv"
# The venv's Python (with botocore) for tests that compare with botocore.
export EKS_REMEDY_PYTHON="$VENV/bin/python"

export AWS_EC2_METADATA_DISABLED=true
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export AWS_SESSION_TOKEN=testing
export AWS_REGION=us-east-1
export AWS_DEFAULT_REGION=us-east-1
unset AWS_PROFILE AWS_CONTAINER_CREDENTIALS_FULL_URI AWS_CONTAINER_CREDENTIALS_RELATIVE_URI AWS_WEB_IDENTITY_TOKEN_FILE || true
export AWS_CONFIG_FILE=/dev/null
export AWS_SHARED_CREDENTIALS_FILE=/dev/null

# Creates the venv with the pinned moto once; later calls only check it.
setup_python() {
  local requirements="$EKS_REMEDY_ROOT/tests/moto/requirements.txt"
  local stamp="$VENV/.requirements"
  if [ -f "$stamp" ] && cmp -s "$requirements" "$stamp"; then
    return
  fi
  echo "setting up $VENV (moto server)" >&2
  mkdir -p "$EKS_REMEDY_CACHE"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$stamp"
}

# Starts moto with eks-remedy's extension on a free 127.0.0.1 port and exports its endpoint;
# the server stops when the calling script exits.
start_moto() {
  local port log
  port="$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  log="$EKS_REMEDY_CACHE/moto-$port.log"
  MOTO_IAM_LOAD_MANAGED_POLICIES=true "$VENV/bin/python" "$EKS_REMEDY_ROOT/tests/moto/eks_remedy_moto.py" \
    -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
  MOTO_PID=$!
  trap 'kill "$MOTO_PID" 2>/dev/null || true' EXIT
  export AWS_ENDPOINT_URL="http://127.0.0.1:$port"
  export EKS_REMEDY_TEST_AWS_ENDPOINT="$AWS_ENDPOINT_URL"
  for _ in $(seq 1 100); do
    if "$VENV/bin/python" -c "import urllib.request,sys; urllib.request.urlopen('$AWS_ENDPOINT_URL/moto-api/data.json', timeout=1)" 2>/dev/null; then
      return
    fi
    if ! kill -0 "$MOTO_PID" 2>/dev/null; then
      cat "$log" >&2
      echo "moto failed to start" >&2
      return 1
    fi
    sleep 0.2
  done
  echo "moto did not answer on $AWS_ENDPOINT_URL" >&2
  return 1
}
