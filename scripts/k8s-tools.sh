#!/usr/bin/env bash
# Set up the Kubernetes cluster the chart is installed and run on, in a per-user
# cache, idempotently:
#
#   control plane   kube-apiserver, kube-controller-manager, kube-scheduler (and
#                   kubectl) built from the Go module proxy at the versions pinned
#                   in tests/deploy/k8s/go.mod and go.sum; etcd from Debian's
#                   etcd-server package (unpacked, never installed as a service)
#   a node          kubelet and kube-proxy from the same pinned module; CoreDNS
#                   (cluster DNS) pinned by tests/deploy/coredns/go.mod; the pod
#                   sandbox's pause binary (tests/deploy/node/pause.c, gcc
#                   -static); containerd, runc, the CNI plugins, conntrack,
#                   iptables and nftables (whose `nft` removes the tables the
#                   node's rules needed) from Debian packages, installed when
#                   missing and their versions checked against NODE_PACKAGES
#
# Output: on stdout, KEY=VALUE lines (KUBE_APISERVER=, KUBE_CONTROLLER_MANAGER=,
# KUBE_SCHEDULER=, KUBELET=, KUBE_PROXY=, KUBECTL=, ETCD=, COREDNS=, PAUSE=,
# NODE_PACKAGES=), so callers can read the paths; progress goes to stderr.
#
# Environment:
#   XDG_CACHE_HOME   cache root (default ~/.cache); binaries go to
#                    $XDG_CACHE_HOME/gr-s2s-consumer/k8s/
#   SKIP_NODE=1      the control plane only (no node packages, CoreDNS, pause)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODULE_DIR="$ROOT/tests/deploy/k8s"
K8S_VERSION="v1.37.2" # must match the require in tests/deploy/k8s/go.mod
COREDNS_DIR="$ROOT/tests/deploy/coredns"
# The node's Debian packages (bookworm) and the upstream versions they must carry:
# the node's configuration (tests/deploy/node.py) is written for these.
NODE_PACKAGES="containerd=1.6. runc=1.1. containernetworking-plugins=1.1. conntrack=1:1.4. iptables=1.8. nftables=1.0."
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/gr-s2s-consumer/k8s"
BIN_DIR="$CACHE/bin"

log() { printf 'k8s-tools: %s\n' "$*" >&2; }

mkdir -p "$BIN_DIR"
exec 9>"$CACHE/.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi

# --- the Kubernetes binaries ------------------------------------------------------
# Rebuilt only when the pinned module set changes.
K8S_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
pins="$K8S_VERSION $(cat "$MODULE_DIR/go.mod" "$MODULE_DIR/go.sum" | sha256sum | cut -c1-16) ${K8S_COMMANDS[*]}"
stamp="$BIN_DIR/.k8s-pins"
built=1
for cmd in "${K8S_COMMANDS[@]}"; do [[ -x "$BIN_DIR/$cmd" ]] || built=0; done
if ((built)) && [[ -f "$stamp" && "$(cat "$stamp")" == "$pins" ]]; then
    log "${K8S_COMMANDS[*]} $K8S_VERSION already built"
else
    command -v go >/dev/null 2>&1 || { log "go is required to build the control plane"; exit 1; }
    log "building ${K8S_COMMANDS[*]} $K8S_VERSION (about 15 min and 2.4 GB on a cold Go cache, 2 cores)..."
    # Stamp the version as Kubernetes' own build does: helm checks the
    # chart's kubeVersion against what the API server reports.
    minor="${K8S_VERSION#v1.}"
    minor="${minor%%.*}"
    ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
    ldflags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
    ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
    (cd "$MODULE_DIR" && GOFLAGS="${GOFLAGS:-} -buildvcs=false -mod=readonly" CGO_ENABLED=0 \
        go build -trimpath -ldflags "$ldflags" -o "$BIN_DIR/" \
        "${K8S_COMMANDS[@]/#/k8s.io/kubernetes/cmd/}")
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

for cmd in "${K8S_COMMANDS[@]}"; do
    key="${cmd^^}"
    printf '%s=%s\n' "${key//-/_}" "$BIN_DIR/$cmd"
done
printf 'ETCD=%s\n' "$etcd_dir/usr/bin/etcd"
if [[ "${SKIP_NODE:-0}" == 1 ]]; then
    exit 0
fi

# --- the node's Debian packages ---------------------------------------------------
apt_lock="${XDG_CACHE_HOME:-$HOME/.cache}/gr-s2s-consumer/.apt.lock"
installed_version() { dpkg-query -W -f '${Status} ${Version}' "$1" 2>/dev/null | awk '$3 == "installed" { print $4 }'; }
missing=()
for pin in $NODE_PACKAGES gcc= libc6-dev=; do
    [[ -n "$(installed_version "${pin%%=*}")" ]] || missing+=("${pin%%=*}")
done
if ((${#missing[@]})); then
    [[ "$(id -u)" == 0 ]] || { log "needs root to install ${missing[*]} (apt-get)"; exit 1; }
    log "installing ${missing[*]} from Debian packages..."
    if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
        flock "$apt_lock" apt-get update -q >&2
    fi
    # No service is started: on a machine without systemd as PID 1 the
    # package's unit is inert, and the node starts containerd with its own
    # configuration, sockets and directories.
    DEBIAN_FRONTEND=noninteractive flock "$apt_lock" apt-get install -y -q \
        -o DPkg::Lock::Timeout=300 --no-install-recommends "${missing[@]}" >&2
fi
versions=()
for pin in $NODE_PACKAGES; do
    pkg="${pin%%=*}" want="${pin#*=}"
    have="$(installed_version "$pkg")"
    [[ "$have" == "$want"* ]] || { log "$pkg $have installed; the node is set up for $want*"; exit 1; }
    versions+=("$pkg=$have")
done
log "node packages: ${versions[*]}"

# --- CoreDNS ------------------------------------------------------------------------
coredns_pins="$(cat "$COREDNS_DIR/go.mod" "$COREDNS_DIR/go.sum" "$COREDNS_DIR/main.go" | sha256sum | cut -c1-16)"
if [[ -x "$BIN_DIR/coredns" && "$(cat "$BIN_DIR/.coredns-pins" 2>/dev/null)" == "$coredns_pins" ]]; then
    log "coredns already built"
else
    log "building coredns (tests/deploy/coredns: $(awk '$1 == "require" && $2 ~ /coredns/ { print $3 }' "$COREDNS_DIR/go.mod"))..."
    (cd "$COREDNS_DIR" && GOFLAGS="${GOFLAGS:-} -buildvcs=false -mod=readonly" CGO_ENABLED=0 \
        go build -trimpath -ldflags "-s -w" -o "$BIN_DIR/coredns" .)
    printf '%s' "$coredns_pins" >"$BIN_DIR/.coredns-pins"
fi

# --- the pause binary -----------------------------------------------------------------
pause_src="$ROOT/tests/deploy/node/pause.c"
pause_pins="$(sha256sum <"$pause_src" | cut -c1-16)"
if [[ -x "$BIN_DIR/pause" && "$(cat "$BIN_DIR/.pause-pins" 2>/dev/null)" == "$pause_pins" ]]; then
    log "pause already built"
else
    gcc -static -O2 -Wall -Wextra -Werror -o "$BIN_DIR/pause" "$pause_src"
    strip "$BIN_DIR/pause"
    printf '%s' "$pause_pins" >"$BIN_DIR/.pause-pins"
    log "pause built ($(stat -c %s "$BIN_DIR/pause") bytes, static)"
fi

printf 'COREDNS=%s\n' "$BIN_DIR/coredns"
printf 'PAUSE=%s\n' "$BIN_DIR/pause"
printf 'NODE_PACKAGES=%s\n' "${versions[*]}"
