#!/usr/bin/env bash
# Set up the Kubernetes control plane the chart is installed on, in a per-user
# cache, idempotently: kube-apiserver and kube-controller-manager built from
# the Go module proxy at the versions pinned in tests/deploy/k8s/go.mod and
# go.sum, and etcd from Debian's etcd-server package (unpacked, never
# installed as a system service).
#
# Output: on stdout, KEY=VALUE lines (KUBE_APISERVER=, KUBE_CONTROLLER_MANAGER=,
# ETCD=), so callers can read the paths; progress goes to stderr.
#
# Environment:
#   XDG_CACHE_HOME   cache root (default ~/.cache); binaries go to
#                    $XDG_CACHE_HOME/gr-s2s-consumer/k8s/
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODULE_DIR="$ROOT/tests/deploy/k8s"
K8S_VERSION="v1.37.2" # must match the require in tests/deploy/k8s/go.mod
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/gr-s2s-consumer/k8s"
BIN_DIR="$CACHE/bin"

log() { printf 'k8s-tools: %s\n' "$*" >&2; }

mkdir -p "$BIN_DIR"
exec 9>"$CACHE/.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi

# --- kube-apiserver, kube-controller-manager -----------------------------------
# Rebuilt only when the pinned module set changes.
pins="$K8S_VERSION $(cat "$MODULE_DIR/go.mod" "$MODULE_DIR/go.sum" | sha256sum | cut -c1-16)"
stamp="$BIN_DIR/.k8s-pins"
if [[ -x "$BIN_DIR/kube-apiserver" && -x "$BIN_DIR/kube-controller-manager" && -f "$stamp" && "$(cat "$stamp")" == "$pins" ]]; then
    log "kube-apiserver and kube-controller-manager $K8S_VERSION already built"
else
    command -v go >/dev/null 2>&1 || { log "go is required to build the control plane"; exit 1; }
    log "building kube-apiserver and kube-controller-manager $K8S_VERSION (about 8 min and 2.4 GB on a cold Go cache)..."
    # Stamp the version as Kubernetes' own build does: helm checks the
    # chart's kubeVersion against what the API server reports.
    minor="${K8S_VERSION#v1.}"
    minor="${minor%%.*}"
    ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
    ldflags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
    ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
    (cd "$MODULE_DIR" && GOFLAGS="${GOFLAGS:-} -buildvcs=false -mod=readonly" CGO_ENABLED=0 \
        go build -trimpath -ldflags "$ldflags" -o "$BIN_DIR/" \
        k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager)
    printf '%s' "$pins" >"$stamp"
fi

# --- etcd -----------------------------------------------------------------------
etcd_dir="$CACHE/etcd"
if [[ -x "$etcd_dir/usr/bin/etcd" ]]; then
    log "etcd already unpacked ($("$etcd_dir/usr/bin/etcd" --version | head -1))"
else
    command -v apt-get >/dev/null 2>&1 || { log "apt-get is required to fetch Debian's etcd-server"; exit 1; }
    # One apt at a time among our scripts (deploy-check runs two at once).
    apt_lock="${XDG_CACHE_HOME:-$HOME/.cache}/gr-s2s-consumer/.apt.lock"
    if ! apt-cache show etcd-server >/dev/null 2>&1; then
        log "apt-get update (no package lists yet)"
        flock "$apt_lock" apt-get update -q >&2
    fi
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && flock "$apt_lock" apt-get download -q etcd-server >&2)
    rm -rf "$etcd_dir"
    dpkg-deb -x "$work"/etcd-server_*.deb "$etcd_dir"
    log "etcd unpacked: $("$etcd_dir/usr/bin/etcd" --version | head -1)"
fi

printf 'KUBE_APISERVER=%s\n' "$BIN_DIR/kube-apiserver"
printf 'KUBE_CONTROLLER_MANAGER=%s\n' "$BIN_DIR/kube-controller-manager"
printf 'ETCD=%s\n' "$etcd_dir/usr/bin/etcd"
