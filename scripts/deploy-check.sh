#!/usr/bin/env bash
# Validate everything that deploys gr-s2s-consumer: the Helm chart and the
# Dockerfile. Exits non-zero if any step fails (every step runs, so one run
# shows every problem).
#
#   1. helm lint --strict      chart defaults and every ci/*-values.yaml scenario
#   2. helm template           every scenario, rendered to $OUT_DIR
#  2b. helm-unittest           the chart's unit tests (helm/gr-s2s-consumer/tests/)
#   3. kubernetes-validate     rendered manifests against Kubernetes $K8S_VERSION,
#                              strict (unknown fields rejected); only the CRD kinds
#                              listed in CRD_KINDS are skipped, by name
#   4. hadolint                the Dockerfile, no findings
#   5. checkov                 the chart (helm framework, each scenario) and the
#                              Dockerfile: zero failed checks. Checks that do not
#                              apply are skipped in place, by ID with a reason
#                              (checkov.io/skipN annotations, a checkov:skip comment)
#   6. image                   scripts/image-check.sh builds the unmodified
#                              Dockerfile with buildah (in the background from the
#                              start: it waits on the network while Go builds)
#   7. cluster                 scripts/k8s-tools.sh builds kube-apiserver,
#                              kube-controller-manager, kube-scheduler, kubelet,
#                              kube-proxy and kubectl (pinned), CoreDNS (pinned) and
#                              the pause binary, unpacks etcd and installs the node's
#                              Debian packages (also in the background from the start)
#   8. pytest tests/deploy     assertions over the rendered manifests and the schema,
#                              the image's CycloneDX SBOM written to build/sbom.cdx.json,
#                              the alerts under promtool, an install of the built
#                              wheel into a fresh venv, the image run with podman
#                              (uid 10001, read-only) against the local broker and
#                              simulator, the chart installed, upgraded and
#                              uninstalled on the control plane, and the chart's
#                              pods run on a real node (the documented install, a
#                              Service named kafka, a rolling update, deleted and
#                              force-deleted pods, readiness, the alerts in a real
#                              Prometheus, the node's teardown)
#
# Environment:
#   K8S_VERSION      Kubernetes version to validate against (default 1.37.0)
#   OUT_DIR          where rendered manifests go (default: a temp dir)
#   PYTHON           interpreter for pytest (default: .venv/bin/python, else python3)
#   PYTEST_ARGS      extra pytest arguments
#   SKIP_PYTEST=1    stop after the static checks (pytest runs them itself too)
#   SKIP_IMAGE=1     no image build (its tests skip)
#   SKIP_CLUSTER=1   no control plane and no node (their tests skip)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1

CHART="helm/gr-s2s-consumer"
K8S_VERSION="${K8S_VERSION:-1.37.0}"
# Custom resources: not in the Kubernetes core schemas. Skipped by exact kind;
# any other kind without a schema fails. (Their shape is asserted in
# tests/deploy/test_chart.py, and the API server checks them against the
# pinned CRDs in tests/deploy/test_cluster.py.)
CRD_KINDS="keda.sh/v1alpha1/ScaledObject keda.sh/v1alpha1/TriggerAuthentication monitoring.coreos.com/v1/ServiceMonitor monitoring.coreos.com/v1/PrometheusRule"
# Release namespace for renders and for checkov: the chart is meant for its
# own namespace, never "default" (checkov CKV_K8S_21).
RELEASE_NAMESPACE="gr-s2s-consumer"

out_dir_tmp=""
if [[ -n "${OUT_DIR:-}" ]]; then
    mkdir -p "$OUT_DIR"
else
    OUT_DIR="$(mktemp -d)"
    out_dir_tmp=1
fi
image_pid=""
k8s_pid=""
cleanup() {
    # An early exit must not leave the background builds running.
    if [[ -n "$image_pid" ]]; then kill "$image_pid" 2>/dev/null || true; fi
    if [[ -n "$k8s_pid" ]]; then kill "$k8s_pid" 2>/dev/null || true; fi
    if [[ -n "$out_dir_tmp" ]]; then rm -rf "$OUT_DIR"; fi
}
trap cleanup EXIT

failures=()
timings=()
step_started=$SECONDS
step_name=""
step() {
    [[ -z "$step_name" ]] || timings+=("$(printf '%5d s  %s' $((SECONDS - step_started)) "$step_name")")
    step_name="$*"
    step_started=$SECONDS
    printf '\n==> %s\n' "$*"
}
fail() { printf 'FAILED: %s\n' "$*"; failures+=("$*"); }

# --- image, in the background --------------------------------------------------------
if [[ "${SKIP_IMAGE:-0}" != 1 ]]; then
    IMAGE_LOG="$OUT_DIR/image-check.log"
    IMAGE_ENV="$OUT_DIR/image-check.env"
    echo "image build started in the background (log: $IMAGE_LOG)"
    bash "$ROOT/scripts/image-check.sh" >"$IMAGE_ENV" 2>"$IMAGE_LOG" &
    image_pid=$!
fi
# The control plane's Go build is the longest step: it starts now too, beside
# the tools' builds (their downloads and links leave cores idle).
if [[ "${SKIP_CLUSTER:-0}" != 1 ]]; then
    K8S_LOG="$OUT_DIR/k8s-tools.log"
    K8S_ENV="$OUT_DIR/k8s-tools.env"
    echo "control plane build started in the background (log: $K8S_LOG)"
    bash "$ROOT/scripts/k8s-tools.sh" >"$K8S_ENV" 2>"$K8S_LOG" &
    k8s_pid=$!
fi

# --- tools ---------------------------------------------------------------------
step "tools (scripts/deploy-tools.sh)"
tool_env="$("$ROOT/scripts/deploy-tools.sh")" || { echo "FAILED: tool set-up" >&2; exit 1; }
while IFS='=' read -r key value; do
    case "$key" in
        TOOLS_DIR | HELM | PROMTOOL | PROMETHEUS | HELM_UNITTEST | HADOLINT | CHECKOV | KUBERNETES_VALIDATE) printf -v "$key" '%s' "$value" ;;
    esac
done <<<"$tool_env"
TOOLS_PY="$(dirname "$CHECKOV")/python"
HELM_DIR="$(dirname "$HELM")"
export PATH="$HELM_DIR:$PATH" # checkov's helm framework runs `helm template`
"$HELM" version --short

scenarios=("$CHART"/ci/*-values.yaml)

# --- 1. lint ------------------------------------------------------------------
step "helm lint --strict"
"$HELM" lint --strict "$CHART" || fail "helm lint (chart defaults)"
for values in "${scenarios[@]}"; do
    "$HELM" lint --strict "$CHART" --namespace "$RELEASE_NAMESPACE" -f "$values" \
        || fail "helm lint ($values)"
done

# --- 2. template --------------------------------------------------------------
step "helm template -> $OUT_DIR"
rendered=()
for values in "${scenarios[@]}"; do
    name="$(basename "$values" .yaml)"
    if "$HELM" template gr-s2s-consumer "$CHART" --namespace "$RELEASE_NAMESPACE" -f "$values" \
        >"$OUT_DIR/$name.yaml"; then
        echo "rendered $values -> $OUT_DIR/$name.yaml"
        rendered+=("$OUT_DIR/$name.yaml")
    else
        fail "helm template ($values)"
    fi
done

# --- 2b. helm-unittest -----------------------------------------------------------
step "helm-unittest (helm/gr-s2s-consumer/tests/*_test.yaml)"
"$HELM_UNITTEST" --strict --color=false "$CHART" || fail "helm-unittest"

# --- 3. kubernetes-validate ------------------------------------------------------
step "kubernetes-validate --strict against Kubernetes $K8S_VERSION (CRD kinds skipped: $CRD_KINDS)"
if ((${#rendered[@]})); then
    "$TOOLS_PY" - "$K8S_VERSION" "$CRD_KINDS" "${rendered[@]}" <<'PY' || fail "kubernetes-validate"
import sys

import kubernetes_validate
import yaml

version, crd_kinds, files = sys.argv[1], set(sys.argv[2].split()), sys.argv[3:]
bad = checked = 0
for path in files:
    with open(path, encoding="utf-8") as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d]
    if not docs:
        print(f"FAIL {path}: no manifests")
        bad += 1
    for doc in docs:
        kind = f"{doc.get('apiVersion')}/{doc.get('kind')}"
        what = f"{path}: {kind} {doc.get('metadata', {}).get('name')}"
        if kind in crd_kinds:
            print(f"SKIP {what} (custom resource, not in the core schemas)")
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            print(f"FAIL {what}: {exc.message} at {'/'.join(map(str, exc.path))}")
            bad += 1
        except kubernetes_validate.SchemaNotFoundError:
            print(f"FAIL {what}: no schema for this kind in Kubernetes {version}")
            bad += 1
        else:
            checked += 1
            print(f"ok   {what}")
print(f"{checked} manifests valid, {bad} failed")
sys.exit(1 if bad else 0)
PY
else
    fail "kubernetes-validate (nothing rendered)"
fi

# --- 4. hadolint --------------------------------------------------------------------
step "hadolint Dockerfile"
if "$HADOLINT" Dockerfile; then echo "hadolint: no findings"; else fail "hadolint Dockerfile"; fi

# --- 5. checkov ---------------------------------------------------------------------
# checkov exits 0 when it cannot render a chart (it only logs a warning), so
# its JSON report is read here: zero failed checks AND something was scanned.
checkov_report() { # $1 = label, $2 = json report
    "$TOOLS_PY" - "$1" "$2" <<'PY'
import json
import sys

label, path = sys.argv[1], sys.argv[2]
try:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
except (OSError, ValueError) as exc:
    print(f"{label}: no readable checkov report ({exc})")
    sys.exit(1)
reports = data if isinstance(data, list) else [data]
failed = passed = resources = 0
for report in reports:
    results = report.get("results", {})
    summary = report.get("summary", {})
    resources += summary.get("resource_count", 0)
    passed += summary.get("passed", 0)
    for check in results.get("failed_checks", []):
        failed += 1
        print(f"  FAILED {check['check_id']} {check['check_name']}: "
              f"{check['resource']} ({check.get('file_path')})")
    for check in results.get("skipped_checks", []):
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        print(f"  skipped {check['check_id']} on {check['resource']}: {reason}")
print(f"{label}: {passed} passed, {failed} failed, {resources} resources")
sys.exit(1 if failed or not resources or not passed else 0)
PY
}

step "checkov (helm framework) on $CHART"
for values in "${scenarios[@]}"; do
    report="$OUT_DIR/checkov-$(basename "$values" .yaml).json"
    HELM_NAMESPACE="$RELEASE_NAMESPACE" "$CHECKOV" --directory "$CHART" --framework helm \
        --var-file "$values" --skip-download --compact --output json \
        >"$report" 2>"$report.log"
    checkov_report "chart with $(basename "$values")" "$report" \
        || { cat "$report.log"; fail "checkov helm ($values)"; }
done

step "checkov (dockerfile framework) on Dockerfile"
report="$OUT_DIR/checkov-dockerfile.json"
"$CHECKOV" --file Dockerfile --framework dockerfile --skip-download --compact \
    --output json >"$report" 2>"$report.log"
checkov_report "Dockerfile" "$report" || { cat "$report.log"; fail "checkov Dockerfile"; }

# --- 6. control plane --------------------------------------------------------------
if [[ "${SKIP_CLUSTER:-0}" != 1 ]]; then
    step "cluster (scripts/k8s-tools.sh, started in the background)"
    k8s_ok=0
    wait "$k8s_pid" || k8s_ok=$?
    k8s_pid=""
    cat "$K8S_LOG"
    if ((k8s_ok == 0)); then
        k8s_env="$(cat "$K8S_ENV")"
        while IFS='=' read -r key value; do
            case "$key" in
                ETCD | KUBE_APISERVER | KUBE_CONTROLLER_MANAGER | KUBE_SCHEDULER | KUBELET | KUBE_PROXY | KUBECTL | COREDNS | PAUSE | NODE_PACKAGES)
                    export "GR_$key=$value" ;;
            esac
        done <<<"$k8s_env"
        "$GR_KUBE_APISERVER" --version
    else
        fail "control plane build (scripts/k8s-tools.sh)"
    fi
fi

# --- 7. image ------------------------------------------------------------------------
if [[ "${SKIP_IMAGE:-0}" != 1 ]]; then
    step "image (scripts/image-check.sh, started in the background)"
    image_ok=0
    wait "$image_pid" || image_ok=$?
    image_pid=""
    if ((image_ok == 0)); then
        tail -n 3 "$IMAGE_LOG"
        while IFS='=' read -r key value; do
            case "$key" in
                IMAGE) export GR_IMAGE="$value" ;;
                CONTAINERS_CONF | CONTAINERS_STORAGE_CONF) export "$key=$value" ;;
                IMAGE_SIZE_BYTES) echo "image size: $((value / 1000000)) MB ($value bytes)" ;;
                BASE_KIND | BUILD_SECONDS) echo "$key=$value" ;;
            esac
        done <"$IMAGE_ENV"
    else
        cat "$IMAGE_LOG"
        fail "image build (scripts/image-check.sh)"
    fi
fi

# --- 8. pytest ----------------------------------------------------------------------
if [[ "${SKIP_PYTEST:-0}" != 1 ]]; then
    step "pytest tests/deploy"
    PYTHON="${PYTHON:-}"
    if [[ -z "$PYTHON" ]]; then
        if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
    fi
    # The image's SBOM (CycloneDX) is kept in build/, beside the checkout's other outputs.
    mkdir -p "$ROOT/build"
    export GR_SBOM_OUT="${GR_SBOM_OUT:-$ROOT/build/sbom.cdx.json}"
    # What the node's scenarios and alerts saw, one line each, shown below.
    export GR_NODE_REPORT="${GR_NODE_REPORT:-$ROOT/build/node-report.txt}"
    : >"$GR_NODE_REPORT"
    # shellcheck disable=SC2086  # PYTEST_ARGS is a word list on purpose
    GR_HELM="$HELM" GR_PROMTOOL="$PROMTOOL" GR_PROMETHEUS="$PROMETHEUS" "$PYTHON" -m pytest tests/deploy ${PYTEST_ARGS:-} \
        || fail "pytest tests/deploy"
    if [[ -s "$GR_SBOM_OUT" ]]; then echo "SBOM of the image: $GR_SBOM_OUT"; fi
    if [[ -s "$GR_NODE_REPORT" ]]; then
        printf '\nthe node (%s):\n' "$GR_NODE_REPORT"
        cat "$GR_NODE_REPORT"
    fi
fi
step "done"
printf '\nstep times:\n'
printf '  %s\n' "${timings[@]}"
printf '  %5d s  total\n' "$SECONDS"

# --- summary --------------------------------------------------------------------------
echo
if ((${#failures[@]})); then
    printf 'deploy-check: %d step(s) failed:\n' "${#failures[@]}"
    printf '  - %s\n' "${failures[@]}"
    exit 1
fi
echo "deploy-check: all passed (helm $("$HELM" version --short), Kubernetes $K8S_VERSION schemas)"
