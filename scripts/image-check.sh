#!/usr/bin/env bash
# Build the image from the unmodified Dockerfile without a Docker engine
# (buildah), ready for tests/deploy/test_image.py to run it with podman.
#
#   1. tools      buildah, podman, runc, debootstrap from Debian packages when missing
#   2. config     a containers.conf and storage.conf of our own (exported via
#                 CONTAINERS_CONF / CONTAINERS_STORAGE_CONF): storage in the user
#                 cache, runc and cgroupfs (crun fails on hybrid cgroups), raised
#                 ulimits (librdkafka starts many threads)
#   3. base       the Dockerfile's base, pinned by tag (FROM) and digest (ARG
#                 PYTHON_BASE_DIGEST): kept if present, else pulled, else (no
#                 registry reachable, as in CI here) a stand-in made with
#                 debootstrap from Debian bookworm's python3.11 and imported
#                 under the same tag; the Dockerfile builds unchanged, told the
#                 stand-in's own digest (--build-arg PYTHON_BASE_DIGEST), and a
#                 build told a digest that is not there must fail (the pin holds)
#   4. build      buildah build; the machine's pip settings and CA bundle are
#                 bind-mounted into the RUN steps only, never into a layer
#
# Output: on stdout, KEY=VALUE lines (IMAGE=, IMAGE_SIZE_BYTES=, BASE_KIND=,
# CONTAINERS_CONF=, CONTAINERS_STORAGE_CONF=, BUILD_SECONDS=, BASE_DIGEST=); progress on stderr.
#
# Environment:
#   GR_IMAGE_NAME    tag to build (default gr-s2s-consumer:check)
#   XDG_CACHE_HOME   cache root (default ~/.cache); storage and the stand-in
#                    base go to $XDG_CACHE_HOME/gr-s2s-consumer/image/
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
IMAGE="${GR_IMAGE_NAME:-gr-s2s-consumer:check}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/gr-s2s-consumer/image"
SUITE="bookworm" # the Dockerfile's base is *-slim-bookworm

log() { printf 'image-check: %s\n' "$*" >&2; }

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi

# --- 1. tools -------------------------------------------------------------------
missing=()
for tool in buildah podman runc debootstrap; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    [[ "$(id -u)" == 0 ]] || { log "needs root to install ${missing[*]} (apt-get)"; exit 1; }
    log "installing ${missing[*]} from Debian packages..."
    # One apt at a time among our scripts (deploy-check runs two at once).
    apt_lock="${XDG_CACHE_HOME:-$HOME/.cache}/gr-s2s-consumer/.apt.lock"
    flock "$apt_lock" apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive flock "$apt_lock" apt-get install -y -q \
        -o DPkg::Lock::Timeout=300 --no-install-recommends \
        "${missing[@]}" uidmap fuse-overlayfs ca-certificates >&2
fi
[[ "$(id -u)" == 0 ]] || { log "runs as root (buildah with chroot isolation, podman with runc)"; exit 1; }

# --- 2. container configuration -------------------------------------------------
# Our own storage, so that nothing else using buildah on the machine sees or
# removes our images, and we leave the system's configuration alone.
export CONTAINERS_CONF="$CACHE/containers.conf"
export CONTAINERS_STORAGE_CONF="$CACHE/storage.conf"
cat >"$CONTAINERS_CONF" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
cat >"$CONTAINERS_STORAGE_CONF" <<EOF
[storage]
driver = "overlay"
graphroot = "$CACHE/storage"
runroot = "$CACHE/run"
EOF

# --- 3. the base image ------------------------------------------------------------
BASE="$(awk 'toupper($1) == "FROM" { print $2; exit }' Dockerfile)"
BASE="${BASE%@*}"
BASE_DIGEST="$(sed -n 's/^ARG PYTHON_BASE_DIGEST=//p' Dockerfile | head -n 1)"
if [[ -z "$BASE" || ! "$BASE_DIGEST" =~ ^sha256:[0-9a-f]{64}$ ]]; then
    log "the Dockerfile must pin its base: FROM <name:tag>@\${PYTHON_BASE_DIGEST}, ARG PYTHON_BASE_DIGEST=sha256:<64 hex>"
    exit 1
fi
base_kind=""
build_args=()
if buildah inspect --type image "$BASE@$BASE_DIGEST" >/dev/null 2>&1; then
    base_kind="present"
    log "base $BASE@$BASE_DIGEST already in storage"
elif timeout 120 buildah pull --quiet "$BASE@$BASE_DIGEST" >/dev/null 2>&1; then
    base_kind="pulled"
    log "base $BASE@$BASE_DIGEST pulled from the configured registries"
elif buildah inspect --type image "$BASE" >/dev/null 2>&1; then
    base_kind="$(buildah inspect --type image --format '{{index .ImageAnnotations "org.opencontainers.image.description"}}' "$BASE" 2>/dev/null | grep -q 'stand-in' && echo stand-in || echo other-digest)"
    log "base $BASE@$BASE_DIGEST not reachable; $BASE already in storage ($base_kind)"
else
    base_kind="stand-in"
    log "base $BASE cannot be pulled: making a stand-in with debootstrap ($SUITE, python3.11)"
    # The machine's own Debian mirror (its apt sources), else debootstrap's default.
    mirror="$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
    if [[ -z "$mirror" ]]; then
        mirror="$(awk '$1 == "deb" && $3 ~ /^bookworm$/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)"
    fi
    rootfs="$CACHE/base-rootfs"
    rm -rf "$rootfs"
    started=$SECONDS
    # passwd: the runtime stage runs groupadd/useradd; python3-pip: `python -m pip`.
    debootstrap --variant=minbase \
        --include=python3.11,python3.11-venv,python3-pip,passwd,ca-certificates \
        "$SUITE" "$rootfs" ${mirror:+"$mirror"} >&2
    # Laid out like the official image: python, python3, pip on PATH in
    # /usr/local/bin, no "externally managed" marker, no apt caches or docs.
    ln -sf /usr/bin/python3.11 "$rootfs/usr/local/bin/python"
    ln -sf /usr/bin/python3.11 "$rootfs/usr/local/bin/python3"
    ln -sf /usr/bin/pip3 "$rootfs/usr/local/bin/pip"
    rm -f "$rootfs"/usr/lib/python3.11/EXTERNALLY-MANAGED
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old
    ctr="$(buildah from scratch)"
    mnt="$(buildah mount "$ctr")"
    cp -a "$rootfs/." "$mnt/"
    buildah umount "$ctr" >/dev/null
    buildah config \
        --env PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 \
        --cmd python3 \
        --annotation "org.opencontainers.image.description=stand-in for $BASE: debootstrap $SUITE minbase + python3.11, CI only" \
        "$ctr"
    buildah commit --quiet --rm "$ctr" "$BASE" >/dev/null
    rm -rf "$rootfs"
    log "stand-in $BASE made in $((SECONDS - started)) s"
fi
if [[ "$base_kind" != present && "$base_kind" != pulled ]]; then
    # Not the pinned image: the build names what it has by that image's own digest,
    # so the FROM line is still resolved by digest.
    BASE_DIGEST="$(buildah inspect --type image --format '{{.FromImageDigest}}' "$BASE")"
    build_args=(--build-arg "PYTHON_BASE_DIGEST=$BASE_DIGEST")
    log "building on $BASE@$BASE_DIGEST ($base_kind, not the pinned digest)"
    # ...and a digest that is not there is refused, not replaced by whatever the tag holds.
    absent="sha256:$(printf 'not-the-base' | sha256sum | cut -d' ' -f1)"
    if buildah build --pull=never --isolation chroot --target base \
        --build-arg "PYTHON_BASE_DIGEST=$absent" --file Dockerfile . >/dev/null 2>&1; then
        log "a build told a digest that is not in storage used the base anyway: the pin does not hold"
        exit 1
    fi
    buildah rm --all >/dev/null
fi

# --- 4. build ---------------------------------------------------------------------
# pip inside RUN needs the machine's index settings and CA bundle when the
# network needs them: bind-mounted read-only for the build only.
volumes=()
pip_conf=""
for candidate in "${PIP_CONFIG_FILE:-}" /etc/pip.conf "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf"; do
    if [[ -n "$candidate" && -f "$candidate" ]]; then
        pip_conf="$candidate"
        break
    fi
done
if [[ -n "$pip_conf" ]]; then
    volumes+=(--volume "$pip_conf:/etc/pip.conf:ro")
    # A CA bundle the settings name is mounted at the same path.
    ca="$(awk -F= '$1 ~ /^[[:space:]]*cert[[:space:]]*$/ { gsub(/[[:space:]]/, "", $2); print $2; exit }' "$pip_conf")"
    if [[ -n "$ca" && -f "$ca" ]]; then
        volumes+=(--volume "$ca:$ca:ro")
    fi
fi
log "building $IMAGE from the Dockerfile (base: $base_kind)..."
started=$SECONDS
buildah build --pull=never --isolation chroot --network host --layers \
    "${volumes[@]}" "${build_args[@]}" --tag "$IMAGE" --file Dockerfile . >&2
build_seconds=$((SECONDS - started))
# buildah 1.28 leaves the stage the others build FROM as a mounted working
# container; nothing else uses this storage, so drop every container.
buildah rm --all >/dev/null
size="$(buildah inspect --type image --format '{{.ImageSize}}' "$IMAGE" 2>/dev/null || true)"
if [[ -z "$size" || "$size" == "<no value>" ]]; then
    size="$(podman image inspect --format '{{.Size}}' "$IMAGE")"
fi
log "built $IMAGE in $build_seconds s: $((size / 1000000)) MB"

printf 'IMAGE=%s\n' "$IMAGE"
printf 'IMAGE_SIZE_BYTES=%s\n' "$size"
printf 'BASE_KIND=%s\n' "$base_kind"
printf 'BASE_DIGEST=%s\n' "$BASE_DIGEST"
printf 'BUILD_SECONDS=%s\n' "$build_seconds"
printf 'CONTAINERS_CONF=%s\n' "$CONTAINERS_CONF"
printf 'CONTAINERS_STORAGE_CONF=%s\n' "$CONTAINERS_STORAGE_CONF"
