#!/usr/bin/env bash
# The image's base, pinned by tag and digest in the Dockerfile (the first FROM's
# tag, ARG PYTHON_BASE_DIGEST), and how to move it. Needs a registry that serves the
# official image, and one of skopeo, docker (buildx) or crane.
#
#   scripts/base-digest.sh                  show the pin and check it: does the
#                                           registry serve the pinned digest, and
#                                           which digest does the tag name today?
#   scripts/base-digest.sh --write [TAG]    pin TAG (default: the pinned tag) at
#                                           the digest the registry serves for it
#                                           now, in the Dockerfile
#
# The digest is the multi-platform index's, so one pin holds for amd64 and
# arm64 alike. After --write: build the image, run the tests, commit the
# Dockerfile with the digest in the commit message.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCKERFILE="$ROOT/Dockerfile"

TAG="$(awk 'toupper($1) == "FROM" { print $2; exit }' "$DOCKERFILE")"
TAG="${TAG%@*}"
DIGEST="$(sed -n 's/^ARG PYTHON_BASE_DIGEST=//p' "$DOCKERFILE" | head -n 1)"
echo "pinned: $TAG@$DIGEST"

# The digest of the index (or manifest) the registry serves for a reference.
resolve() {
    local ref="$1"
    if command -v skopeo >/dev/null 2>&1; then
        skopeo inspect --raw "docker://docker.io/library/$ref" | sha256sum | sed 's/^/sha256:/; s/ .*//'
    elif command -v docker >/dev/null 2>&1; then
        docker buildx imagetools inspect "$ref" --format '{{.Manifest.Digest}}'
    elif command -v crane >/dev/null 2>&1; then
        crane digest "$ref"
    else
        echo "base-digest: needs skopeo, docker (buildx) or crane" >&2
        return 1
    fi
}

case "${1:-}" in
    "")
        current="$(resolve "$TAG")"
        echo "the registry serves $TAG at $current"
        if resolve "$TAG@$DIGEST" >/dev/null 2>&1; then
            echo "the pinned digest is served: builds get exactly that image"
        else
            echo "the pinned digest is NOT served: builds fail; move the pin (--write)" >&2
            exit 1
        fi
        if [[ "$current" != "$DIGEST" ]]; then
            echo "the tag has moved since it was pinned (a rebuilt base, e.g. Debian fixes): consider --write"
        fi
        ;;
    --write)
        new_tag="${2:-$TAG}"
        new_digest="$(resolve "$new_tag")"
        [[ "$new_digest" =~ ^sha256:[0-9a-f]{64}$ ]] || { echo "base-digest: no digest for $new_tag" >&2; exit 1; }
        sed -i "s|^FROM $TAG@|FROM $new_tag@|; s|^ARG PYTHON_BASE_DIGEST=.*|ARG PYTHON_BASE_DIGEST=$new_digest|" "$DOCKERFILE"
        echo "pinned now: $new_tag@$new_digest (Dockerfile updated)"
        ;;
    *)
        sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
