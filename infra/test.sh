#!/usr/bin/env bash
# Runs every test of infra/ offline: SAM lint and validation, CDK type check, synth and assertion
# tests, the SAM/CDK drift test, the event patterns against sample events, and the RBAC manifest.
#
# Installs what it needs on first use: a Python venv with infra/requirements.txt under
# ${EKS_REMEDY_CACHE:-~/.cache/eks-remedy}/infra-venv, and `npm ci` in infra/cdk; both are
# skipped while their lock files are unchanged. Nothing is built (placeholder bundles stand in for
# the functions), deployed, or sent to AWS. Exit status: 0 when every step passed.
set -uo pipefail

INFRA="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${EKS_REMEDY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/eks-remedy}"
VENV="$CACHE/infra-venv"
CDK="$INFRA/cdk"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Offline AWS: fake credentials, a region, no instance metadata, no profile files, and every
# SDK endpoint on a loopback port where nothing listens, so a stray call fails at once.
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_SESSION_TOKEN=testing
export AWS_EC2_METADATA_DISABLED=true
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
export AWS_ENDPOINT_URL=http://127.0.0.1:9
unset AWS_PROFILE AWS_CONTAINER_CREDENTIALS_FULL_URI AWS_CONTAINER_CREDENTIALS_RELATIVE_URI AWS_WEB_IDENTITY_TOKEN_FILE || true
export SAM_CLI_TELEMETRY=0
export CDK_DISABLE_CLI_TELEMETRY=true CDK_DISABLE_VERSION_CHECK=true
export PYTHONDONTWRITEBYTECODE=1

passed=0
failed=0
started=$SECONDS

# step NAME COMMAND...: runs the command with its output in a log, prints PASS or FAIL.
step() {
  local name="$1" log="$WORK/step.log" begin=$SECONDS
  shift
  if "$@" >"$log" 2>&1; then
    passed=$((passed + 1))
    echo "PASS $name ($((SECONDS - begin))s)$(summary "$log")"
  else
    failed=$((failed + 1))
    echo "FAIL $name ($((SECONDS - begin))s)"
    tail -n 60 "$log" | sed 's/^/    /'
  fi
}

# The test runners' own counts, when the log has them.
summary() {
  local line
  line="$(grep -E '^(=+ )?[0-9]+ (passed|failed)' "$1" | tail -n 1 | tr -d '=' | xargs)"
  if [ -z "$line" ]; then
    line="$(grep -E '^# (pass|fail) [0-9]+$' "$1" | tr -d '#' | xargs)"
  fi
  if [ -n "$line" ]; then echo ": $line"; fi
}

setup_python() {
  local stamp="$VENV/.requirements"
  local wanted
  wanted="$(python3 --version 2>&1; cat "$INFRA/requirements.txt")"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
    return 0
  fi
  echo "setting up $VENV" >&2
  rm -rf "$VENV"
  mkdir -p "$CACHE"
  python3 -m venv "$VENV" &&
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$INFRA/requirements.txt" &&
    printf '%s' "$wanted" >"$stamp"
}

setup_node() {
  local stamp="$CDK/node_modules/.eks-remedy-lock"
  if [ -f "$stamp" ] && cmp -s "$CDK/package-lock.json" "$stamp"; then
    return 0
  fi
  echo "installing infra/cdk/node_modules (npm ci)" >&2
  (cd "$CDK" && npm ci --no-audit --no-fund --loglevel=error) &&
    cp "$CDK/package-lock.json" "$stamp"
}

# Placeholder bundles: synthesis hashes them, nothing runs them.
make_assets() {
  local function
  for function in node-interruption pending-pods volume-attach; do
    mkdir -p "$WORK/assets/$function"
    printf 'placeholder for %s\n' "$function" >"$WORK/assets/$function/bootstrap.zip"
  done
}

# synth CONFIG [APP]: `cdk synth` of one configuration of infra/test/configs.json.
synth() {
  local config="$1" context
  shift
  mapfile -t context < <("$VENV/bin/python" "$INFRA/test/templates.py" "$config") || return 1
  # Without credentials the CDK CLI does not look up a default account (an STS call).
  (cd "$CDK" && env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -u AWS_SESSION_TOKEN \
    ./node_modules/.bin/cdk synth --no-notices --no-version-reporting --no-lookups --quiet \
    "$@" -c "AssetDir=$WORK/assets" "${context[@]}" -o "$WORK/cdk/$config")
}

# sam validate checks PyPI for a newer SAM CLI; a loopback proxy keeps it from leaving the machine.
sam_validate() {
  HTTPS_PROXY=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 NO_PROXY= \
    "$VENV/bin/sam" validate --lint --template-file "$INFRA/sam/template.yaml"
}

step "install Python tools ($VENV)" setup_python
step "install CDK dependencies (npm ci)" setup_node
if [ "$failed" -gt 0 ]; then
  echo "infra: $passed passed, $failed failed"
  exit 1
fi
make_assets

step "cfn-lint infra/sam/template.yaml" "$VENV/bin/cfn-lint" "$INFRA/sam/template.yaml"
step "sam validate --lint infra/sam/template.yaml" sam_validate
step "tsc: CDK app and tests type-check" bash -c "cd '$CDK' && rm -rf dist && ./node_modules/.bin/tsc"
step "cdk synth offline (minimal, cdk.json app via ts-node)" synth minimal
for config in $(cd "$INFRA/test" && "$VENV/bin/python" -c 'import json; print(" ".join(sorted(json.load(open("configs.json")))))'); do
  if [ "$config" != minimal ]; then
    step "cdk synth offline ($config)" synth "$config" --app "node dist/bin/eks-remedy.js"
  fi
done
# W3005: CDK makes each function depend on its role's policy as well as the role it references.
step "cfn-lint CDK output (full)" "$VENV/bin/cfn-lint" --ignore-checks W3005 -- "$WORK/cdk/full/EksRemedy.template.json"
step "CDK assertion tests" bash -c "cd '$CDK' && node --test dist/test/"
step "drift, event pattern and RBAC tests (pytest)" env EKS_REMEDY_CDK_OUT="$WORK/cdk" \
  "$VENV/bin/python" -m pytest -p no:cacheprovider -q -rfE "$INFRA/test"

echo "infra: $((SECONDS - started))s"
echo "infra: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
