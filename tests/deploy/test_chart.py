"""The Helm chart, rendered with the real helm and checked manifest by manifest.

Each test states one promise of the chart (secrets only from Secrets, secure
pod defaults, probes, drain time, replicas never beyond partitions, ...) and
fails when the templates break it.
"""

from __future__ import annotations

import base64
import json
import posixpath
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import (
    CHART,
    CI_VALUES,
    MINIMAL,
    ROOT,
    Manifest,
    Rendered,
    RenderErrorFn,
    RenderFn,
    merge,
)

API_KEY = "gr-test-key-do-not-use"  # the key ci/all-options-values.yaml gives api.key
SASL_PASSWORD = "not-a-real-password"  # likewise kafka.sasl.password
ALL_OPTIONS = CI_VALUES / "all-options-values.yaml"
HPA = CI_VALUES / "hpa-values.yaml"

KEDA: dict[str, Any] = {"kafka": {"partitions": 6}, "autoscaling": {"mode": "keda"}}


def _walk_strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _walk_strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _walk_strings(v)]
    return []


def _volume(r: Rendered, name: str) -> Manifest:
    found: list[Manifest] = [v for v in r.pod_spec["volumes"] if v["name"] == name]
    assert len(found) == 1, f"volume {name}: {r.pod_spec['volumes']}"
    return found[0]


def _mount(r: Rendered, name: str) -> Manifest:
    found: list[Manifest] = [m for m in r.container["volumeMounts"] if m["name"] == name]
    assert len(found) == 1, f"mount {name}: {r.container['volumeMounts']}"
    return found[0]


# --------------------------------------------------------------- secrets ----


@pytest.mark.parametrize("scenario", ["default", "all-options", "hpa"])
def test_api_key_never_in_a_configmap_or_a_plain_env_value(
    scenarios: dict[str, Rendered], scenario: str
) -> None:
    r = scenarios[scenario]
    for cm in r.of_kind("ConfigMap"):
        text = yaml.safe_dump(cm)
        assert API_KEY not in text, f"API key in ConfigMap {cm['metadata']['name']}"
        assert SASL_PASSWORD not in text, f"SASL password in ConfigMap {cm['metadata']['name']}"
        assert "GR_API_KEY" not in cm.get("data", {}), "GR_API_KEY in a ConfigMap"
    env = r.env()
    assert "GR_API_KEY" not in env, "the key must come only from GR_API_KEY_FILE"
    for var in env.values():
        assert API_KEY not in str(var.get("value", ""))
        assert SASL_PASSWORD not in str(var.get("value", ""))
    # Nothing in the pod template carries a secret value at all.
    pod_strings = _walk_strings(r.deployment["spec"]["template"])
    assert not [s for s in pod_strings if API_KEY in s or SASL_PASSWORD in s]


def test_chart_created_api_secret_holds_the_key(scenarios: dict[str, Rendered]) -> None:
    r = scenarios["all-options"]
    secrets = {s["metadata"]["name"]: s for s in r.of_kind("Secret")}
    api = secrets[_volume(r, "api-key")["secret"]["secretName"]]
    assert base64.b64decode(api["data"]["api-key"]).decode() == API_KEY


@pytest.mark.parametrize("scenario", ["default", "all-options", "hpa"])
def test_api_key_is_a_mounted_secret_file(scenarios: dict[str, Rendered], scenario: str) -> None:
    r = scenarios[scenario]
    key_file = r.env()["GR_API_KEY_FILE"]["value"]
    volume = _volume(r, "api-key")
    mount = _mount(r, "api-key")
    assert "secret" in volume, "the API key volume must be a Secret"
    assert mount.get("readOnly") is True
    # A subPath mount never sees a rotated Secret: the directory must be mounted.
    assert "subPath" not in mount
    assert posixpath.dirname(key_file) == mount["mountPath"]
    items = volume["secret"]["items"]
    assert [i["path"] for i in items] == [posixpath.basename(key_file)]


def test_existing_api_secret_takes_precedence(render: RenderFn) -> None:
    r = render(
        merge(
            MINIMAL,
            {"api": {"key": "ignored-key", "existingSecret": "mine", "existingSecretKey": "k"}},
        )
    )
    volume = _volume(r, "api-key")
    assert volume["secret"]["secretName"] == "mine"
    assert volume["secret"]["items"][0]["key"] == "k"
    assert not r.of_kind("Secret"), "no Secret is created when an existing one is named"
    assert "ignored-key" not in yaml.safe_dump_all(r.docs)


def test_api_key_rotation_does_not_restart_pods(render: RenderFn) -> None:
    base = {"kafka": MINIMAL["kafka"]}
    one = render(merge(base, {"api": {"key": "key-one"}}))
    two = render(merge(base, {"api": {"key": "key-two"}}))
    assert one.deployment["spec"]["template"] == two.deployment["spec"]["template"]
    assert one.one("Secret")["data"] != two.one("Secret")["data"]


def test_config_change_rolls_the_pods(render: RenderFn) -> None:
    info = render(MINIMAL)
    debug = render(merge(MINIMAL, {"log": {"level": "DEBUG"}}))
    checksum = "checksum/config"
    a = info.deployment["spec"]["template"]["metadata"]["annotations"][checksum]
    b = debug.deployment["spec"]["template"]["metadata"]["annotations"][checksum]
    assert re.fullmatch(r"[0-9a-f]{64}", a)
    assert a != b


def test_sasl_credentials_come_from_a_secret(scenarios: dict[str, Rendered]) -> None:
    r = scenarios["all-options"]
    env = r.env()
    assert "value" not in env["KAFKA_SASL_USERNAME"], (
        "KAFKA_SASL_USERNAME must not be a plain value"
    )
    secret_name = env["KAFKA_SASL_USERNAME"]["valueFrom"]["secretKeyRef"]["name"]
    # the password: a file from the same Secret (watched: a rotation restarts the worker)
    assert "KAFKA_SASL_PASSWORD" not in env
    assert _volume(r, "kafka-sasl")["secret"]["secretName"] == secret_name
    assert secret_name in {s["metadata"]["name"] for s in r.of_kind("Secret")}
    cfg = r.config_env()
    assert cfg["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert cfg["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert "KAFKA_SASL_PASSWORD" not in cfg
    assert "KAFKA_SASL_USERNAME" not in cfg
    # KEDA reads the very same Secret.
    auth = r.one("TriggerAuthentication")
    refs = {p["parameter"]: p for p in auth["spec"]["secretTargetRef"]}
    assert refs["username"]["name"] == refs["password"]["name"] == secret_name


def test_existing_sasl_secret(render: RenderFn) -> None:
    r = render(
        merge(
            MINIMAL,
            {
                "kafka": {
                    "sasl": {"enabled": True, "existingSecret": "kafka-creds", "passwordKey": "pw"}
                }
            },
        )
    )
    volume = _volume(r, "kafka-sasl")["secret"]
    assert volume["secretName"] == "kafka-creds"
    assert volume["items"] == [{"key": "pw", "path": "password"}]
    assert not r.of_kind("Secret")
    assert r.config_env()["KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"


@pytest.mark.parametrize("existing", ["", "kafka-creds"])
def test_the_sasl_password_is_a_watched_file_so_a_rotation_reaches_the_pods(
    render: RenderFn, existing: str
) -> None:
    """No checksum can follow an existingSecret the chart never sees: the worker reads the
    password from the mounted Secret (the whole directory, which the kubelet updates; a
    subPath mount never would) and restarts itself when it changes."""
    sasl: dict[str, Any] = {"enabled": True, "existingSecret": existing}
    if not existing:
        sasl.update(username="u", password=SASL_PASSWORD)
    r = render(merge(MINIMAL, {"kafka": {"sasl": sasl}}))
    password_file = r.env()["KAFKA_SASL_PASSWORD_FILE"]["value"]
    mount = _mount(r, "kafka-sasl")
    assert mount == {
        "name": "kafka-sasl",
        "mountPath": posixpath.dirname(password_file),
        "readOnly": True,
    }
    items = _volume(r, "kafka-sasl")["secret"]["items"]
    assert items == [{"key": "password", "path": posixpath.basename(password_file)}]
    assert SASL_PASSWORD not in str(r.pod_spec)


def test_sasl_without_credentials_fails(render_error: RenderErrorFn) -> None:
    err = render_error(merge(MINIMAL, {"kafka": {"sasl": {"enabled": True}}}))
    assert "kafka.sasl.existingSecret" in err


def test_tls_ca_is_a_mounted_secret(scenarios: dict[str, Rendered]) -> None:
    r = scenarios["all-options"]
    ca_location = r.config_env()["KAFKA_SSL_CA_LOCATION"]
    volume = _volume(r, "kafka-ca")
    assert volume["secret"]["secretName"] == "kafka-ca"
    assert posixpath.dirname(ca_location) == _mount(r, "kafka-ca")["mountPath"]
    assert volume["secret"]["items"] == [{"key": "ca.crt", "path": posixpath.basename(ca_location)}]


@pytest.mark.parametrize(
    "key",
    [
        "sasl.password",
        "ssl.key.password",
        "sasl.username",
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.config",  # carries clientSecret=... among its fields
    ],
)
def test_credentials_in_kafka_config_are_refused(render_error: RenderErrorFn, key: str) -> None:
    err = render_error(merge(MINIMAL, {"kafka": {"config": {key: "hunter2"}}}))
    assert "credential" in err
    assert key in err


def test_plain_gr_api_key_in_extra_env_is_refused(render_error: RenderErrorFn) -> None:
    err = render_error(merge(MINIMAL, {"extraEnv": [{"name": "GR_API_KEY", "value": "k"}]}))
    assert "GR_API_KEY" in err


# ----------------------------------------------------------- environment ----


def test_environment_follows_the_contract(scenarios: dict[str, Rendered]) -> None:
    cfg = scenarios["all-options"].config_env()
    assert cfg["KAFKA_BOOTSTRAP_SERVERS"] == "b-1.kafka.example.com:9096,b-2.kafka.example.com:9096"
    assert cfg["KAFKA_TOPICS"] == "game-events"
    assert cfg["KAFKA_GROUP_ID"] == "gr-s2s-consumer-prod"
    assert cfg["KAFKA_DLQ_TOPIC"] == "game-events.dlq"
    # kafka.config: prefix, upper-case, "." -> "_"; whole numbers stay whole.
    assert cfg["KAFKA_AUTO_OFFSET_RESET"] == "earliest"
    assert cfg["KAFKA_FETCH_MAX_BYTES"] == "10485760"
    assert cfg["KAFKA_QUEUED_MAX_MESSAGES_KBYTES"] == "32768"
    assert cfg["GR_BASE_URL"] == "https://sdk-api.gamerebellion.com"
    assert cfg["GR_BATCH_MAX_EVENTS"] == "100"
    assert cfg["GR_BATCH_MAX_BYTES"] == "1048576"
    assert cfg["GR_BATCH_LINGER_MS"] == "250"
    assert cfg["GR_RATE_LIMIT_PER_MINUTE"] == "600"
    assert cfg["GR_SHUTDOWN_TIMEOUT_S"] == "45"
    assert cfg["GR_HTTP_PORT"] == "8080"
    assert (cfg["GR_LOG_LEVEL"], cfg["GR_LOG_FORMAT"]) == ("DEBUG", "text")
    assert all(isinstance(v, str) for v in cfg.values())
    env = scenarios["all-options"].env()
    assert env["GR_MAX_IN_FLIGHT"]["value"] == "4"  # extraEnv


def test_unset_optional_settings_are_left_to_the_service(scenarios: dict[str, Rendered]) -> None:
    cfg = scenarios["default"].config_env()
    for name in ("GR_BATCH_MAX_BYTES", "GR_BATCH_LINGER_MS", "GR_RATE_LIMIT_PER_MINUTE"):
        assert name not in cfg
    assert not [k for k in cfg if k.startswith("KAFKA_SASL") or k == "KAFKA_SECURITY_PROTOCOL"]


def test_topics_list_and_regex(scenarios: dict[str, Rendered]) -> None:
    assert scenarios["hpa"].config_env()["KAFKA_TOPICS"] == "game-events,^game-events-region-.*"


def test_service_owned_kafka_settings_are_refused_by_the_schema(
    render_error: RenderErrorFn,
) -> None:
    err = render_error(merge(MINIMAL, {"kafka": {"config": {"enable.auto.commit": "true"}}}))
    assert "enable.auto.commit" in err or "config" in err


def test_bare_defaults_ask_for_the_required_values(render_error: RenderErrorFn) -> None:
    assert "kafka.bootstrapServers is required" in render_error()
    err = render_error({"kafka": {"bootstrapServers": "k:9092"}})
    assert "api.existingSecret" in err
    assert "api.key" in err


# -------------------------------------------------------------- security ----


@pytest.mark.parametrize("scenario", ["default", "all-options", "hpa"])
def test_security_context(scenarios: dict[str, Rendered], scenario: str) -> None:
    r = scenarios[scenario]
    pod = r.pod_spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert isinstance(pod["runAsUser"], int)
    assert pod["runAsUser"] >= 10000
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    c = r.container["securityContext"]
    assert c["runAsNonRoot"] is True
    assert c["runAsUser"] == pod["runAsUser"] == 10001
    assert c["readOnlyRootFilesystem"] is True
    assert c["allowPrivilegeEscalation"] is False
    assert c.get("privileged", False) is False
    assert c["capabilities"]["drop"] == ["ALL"]
    assert "add" not in c["capabilities"]
    assert c["seccompProfile"] == {"type": "RuntimeDefault"}
    assert r.pod_spec["automountServiceAccountToken"] is False
    # A read-only root still has a writable /tmp.
    assert "emptyDir" in _volume(r, "tmp")
    assert _mount(r, "tmp")["mountPath"] == "/tmp"


def test_service_account(scenarios: dict[str, Rendered]) -> None:
    r = scenarios["default"]
    sa = r.one("ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    assert r.pod_spec["serviceAccountName"] == sa["metadata"]["name"]
    assert scenarios["all-options"].pod_spec["serviceAccountName"] == "gr-s2s-consumer-sa"


def test_all_options_image_by_digest(scenarios: dict[str, Rendered]) -> None:
    image = scenarios["all-options"].container["image"]
    assert image.startswith("registry.example.com/games/gr-s2s-consumer:0.1.0@sha256:")
    assert scenarios["default"].container["image"] == "gr-s2s-consumer:0.1.0"


# ---------------------------------------------------------------- probes ----


@pytest.mark.parametrize("scenario", ["default", "all-options"])
def test_probes(scenarios: dict[str, Rendered], scenario: str) -> None:
    r = scenarios[scenario]
    c = r.container
    (port,) = c["ports"]
    assert port["name"] == "http"
    assert port["containerPort"] == 8080
    assert r.config_env()["GR_HTTP_PORT"] == str(port["containerPort"])
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


def test_http_port_moves_everything(render: RenderFn) -> None:
    r = render(merge(MINIMAL, {"http": {"port": 9100}}))
    assert r.container["ports"][0]["containerPort"] == 9100
    assert r.config_env()["GR_HTTP_PORT"] == "9100"
    svc = r.one("Service")
    assert svc["spec"]["ports"][0]["targetPort"] == "http"


# ------------------------------------------------------------ drain time ----


@pytest.mark.parametrize("scenario", ["default", "all-options", "hpa"])
def test_grace_period_exceeds_drain_time(scenarios: dict[str, Rendered], scenario: str) -> None:
    r = scenarios[scenario]
    shutdown = float(r.config_env()["GR_SHUTDOWN_TIMEOUT_S"])
    assert r.pod_spec["terminationGracePeriodSeconds"] > shutdown


def test_grace_period_is_computed_from_the_drain_time(render: RenderFn) -> None:
    r = render(merge(MINIMAL, {"shutdownTimeoutSeconds": 120}))
    assert r.pod_spec["terminationGracePeriodSeconds"] == 135
    assert r.config_env()["GR_SHUTDOWN_TIMEOUT_S"] == "120"


@pytest.mark.parametrize("grace", [10, 30])
def test_grace_period_not_above_drain_time_fails(render_error: RenderErrorFn, grace: int) -> None:
    err = render_error(
        merge(MINIMAL, {"shutdownTimeoutSeconds": 30, "terminationGracePeriodSeconds": grace})
    )
    assert "terminationGracePeriodSeconds" in err
    assert "shutdownTimeoutSeconds" in err


# ----------------------------------------------------------- autoscaling ----


def test_fixed_replicas_without_autoscaler(scenarios: dict[str, Rendered]) -> None:
    r = scenarios["default"]
    assert r.deployment["spec"]["replicas"] == 2
    assert not ({"HorizontalPodAutoscaler", "ScaledObject"} & r.kinds())


def test_keda_scaled_object(scenarios: dict[str, Rendered]) -> None:
    r = scenarios["all-options"]
    assert "replicas" not in r.deployment["spec"], "KEDA owns the replicas"
    assert "HorizontalPodAutoscaler" not in r.kinds()
    so = r.one("ScaledObject")
    spec = so["spec"]
    assert spec["scaleTargetRef"]["name"] == r.deployment["metadata"]["name"]
    assert spec["maxReplicaCount"] <= 12  # kafka.partitions in all-options
    assert spec["minReplicaCount"] >= 1
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert all(isinstance(v, str) for v in meta.values()), meta
    assert meta["bootstrapServers"] == r.config_env()["KAFKA_BOOTSTRAP_SERVERS"]
    assert meta["consumerGroup"] == r.config_env()["KAFKA_GROUP_ID"]
    assert meta["topic"] == "game-events"
    assert meta["lagThreshold"] == "1000"
    assert meta["allowIdleConsumers"] == "false"
    assert meta["excludePersistentLag"] == "true"
    assert meta["offsetResetPolicy"] == "earliest"  # follows kafka.config auto.offset.reset
    assert (meta["sasl"], meta["tls"]) == ("scram_sha512", "enable")
    assert (
        trigger["authenticationRef"]["name"] == r.one("TriggerAuthentication")["metadata"]["name"]
    )


def test_keda_defaults(render: RenderFn) -> None:
    r = render(merge(MINIMAL, KEDA))
    spec = r.one("ScaledObject")["spec"]
    # The default budget (1,000 requests/min, 100 events a request, 2,000 events/s a
    # worker) feeds ceil(1000 * 100 / 60 / 2000) = 1 worker, below the 6 partitions.
    assert spec["maxReplicaCount"] == 1
    assert spec["minReplicaCount"] == 1
    meta = spec["triggers"][0]["metadata"]
    assert meta["allowIdleConsumers"] == "false"
    assert meta["excludePersistentLag"] == "false"
    # Where the workers start without a committed offset (consumer/kafka_config.py).
    assert meta["offsetResetPolicy"] == "earliest"
    assert "sasl" not in meta
    assert "authenticationRef" not in spec["triggers"][0]
    assert "TriggerAuthentication" not in r.kinds()
    assert "replicas" not in r.deployment["spec"]


def test_keda_offset_reset_follows_the_workers(render: RenderFn) -> None:
    latest = {"kafka": {"config": {"auto.offset.reset": "latest"}}}
    meta = render(merge(MINIMAL, KEDA, latest)).one("ScaledObject")["spec"]["triggers"][0]
    assert meta["metadata"]["offsetResetPolicy"] == "latest"
    assert render(merge(MINIMAL, KEDA, latest)).config_env()["KAFKA_AUTO_OFFSET_RESET"] == "latest"


def _keda_auth(r: Rendered) -> dict[str, tuple[str, str]]:
    spec = r.one("TriggerAuthentication")["spec"]
    refs = spec.get("secretTargetRef", []) + spec.get("configMapTargetRef", [])
    return {ref["parameter"]: (ref["name"], ref["key"]) for ref in refs}


def test_keda_gets_the_workers_client_certificate(render: RenderFn) -> None:
    """Mutual TLS: the scaler cannot reach a broker that requires a client certificate
    without one, so it reads the very Secret the workers mount."""
    tls = {"kafka": {"tls": {"enabled": True, "caSecret": "kafka-ca",
                             "clientCertSecret": "kafka-client", "clientCertKey": "cert.pem",
                             "clientKeyKey": "key.pem"}}}  # fmt: skip
    r = render(merge(MINIMAL, KEDA, tls))
    assert _keda_auth(r) == {
        "ca": ("kafka-ca", "ca.crt"),
        "cert": ("kafka-client", "cert.pem"),
        "key": ("kafka-client", "key.pem"),
    }
    trigger = r.one("ScaledObject")["spec"]["triggers"][0]
    assert trigger["metadata"]["tls"] == "enable"
    assert "sasl" not in trigger["metadata"]
    assert (
        trigger["authenticationRef"]["name"] == r.one("TriggerAuthentication")["metadata"]["name"]
    )
    # A client certificate alone (system CAs) still needs the TriggerAuthentication.
    no_ca = merge(MINIMAL, KEDA, tls, {"kafka": {"tls": {"caSecret": ""}}})
    assert set(_keda_auth(render(no_ca))) == {"cert", "key"}


@pytest.mark.parametrize(
    ("mechanism", "sasl"),
    [("PLAIN", "plaintext"), ("SCRAM-SHA-256", "scram_sha256"), ("SCRAM-SHA-512", "scram_sha512"),
     ("OAUTHBEARER", "oauthbearer")],
)  # fmt: skip
def test_keda_speaks_every_sasl_mechanism_the_workers_do(
    render: RenderFn, mechanism: str, sasl: str
) -> None:
    values = merge(
        MINIMAL,
        KEDA,
        {"kafka": {"tls": {"enabled": True},
                   "sasl": {"enabled": True, "mechanism": mechanism, "existingSecret": "kafka-creds",
                            "oauthbearer": {"tokenEndpointUrl": "https://idp.example.com/token",
                                            "scopes": ["kafka", "lag.read"],
                                            "extensions": {"logicalCluster": "lkc-1"}}}}},
    )  # fmt: skip
    r = render(values)
    meta = r.one("ScaledObject")["spec"]["triggers"][0]["metadata"]
    assert (meta["sasl"], meta["tls"]) == (sasl, "enable")
    auth = _keda_auth(r)
    assert auth["username"] == ("kafka-creds", "username")
    assert auth["password"] == ("kafka-creds", "password")
    env = r.env()
    cm = r.config_env()
    assert cm["KAFKA_SASL_MECHANISM"] == mechanism
    if mechanism != "OAUTHBEARER":
        assert {"KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD_FILE"} <= set(env)
        assert "ConfigMap" not in {
            d["kind"] for d in r.docs if d["metadata"]["name"].endswith("-keda")
        }
        return
    # OAUTHBEARER: the Secret holds the OIDC client's id and secret; the rest is configuration
    # the workers and the scaler both read, each in its own spelling.
    assert env["KAFKA_SASL_OAUTHBEARER_CLIENT_ID"]["valueFrom"]["secretKeyRef"]["key"] == "username"
    assert (
        env["KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET"]["valueFrom"]["secretKeyRef"]["key"]
        == "password"
    )
    assert "KAFKA_SASL_USERNAME" not in env
    assert cm["KAFKA_SASL_OAUTHBEARER_METHOD"] == "oidc"
    assert cm["KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL"] == "https://idp.example.com/token"
    assert cm["KAFKA_SASL_OAUTHBEARER_SCOPE"] == "kafka lag.read"
    assert cm["KAFKA_SASL_OAUTHBEARER_EXTENSIONS"] == "logicalCluster=lkc-1"
    (keda_cm,) = [d for d in r.of_kind("ConfigMap") if d["metadata"]["name"].endswith("-keda")]
    assert keda_cm["data"] == {
        "oauthTokenEndpointUri": "https://idp.example.com/token",
        "scopes": "kafka,lag.read",
        "oauthExtensions": "logicalCluster=lkc-1",
    }
    for parameter in ("oauthTokenEndpointUri", "scopes", "oauthExtensions"):
        assert auth[parameter] == (keda_cm["metadata"]["name"], parameter)


def test_oauthbearer_needs_a_token_endpoint(render_error: RenderErrorFn) -> None:
    sasl = {"kafka": {"sasl": {"enabled": True, "mechanism": "OAUTHBEARER",
                               "existingSecret": "kafka-creds"}}}  # fmt: skip
    assert "kafka.sasl.oauthbearer.tokenEndpointUrl" in render_error(merge(MINIMAL, sasl))


@pytest.mark.parametrize("via", ["values", "kafka.config"])
def test_gssapi_is_refused_since_the_worker_cannot_do_it(
    render_error: RenderErrorFn, via: str
) -> None:
    if via == "values":
        err = render_error(
            merge(MINIMAL, {"kafka": {"sasl": {"enabled": True, "mechanism": "GSSAPI"}}})
        )
        assert "/kafka/sasl/mechanism" in err  # the schema's enum
        assert "GSSAPI" not in err.split("must be one of")[1]
        return
    sasl = {"kafka": {"sasl": {"enabled": True, "existingSecret": "kafka-creds"},
                      "config": {"sasl.mechanism": "GSSAPI"}}}  # fmt: skip
    err = render_error(merge(MINIMAL, KEDA, sasl))
    assert "SASL mechanism GSSAPI is not supported" in err


def test_the_budget_caps_scale_out_never_the_availability_floor(render: RenderFn) -> None:
    """Two workers on the default Pro budget: they share the key's budget (each paces to its
    share of it), so the autoscaler runs between 2 and 2, not a render failure."""
    r = render(merge(MINIMAL, {"kafka": {"partitions": 12},
                               "autoscaling": {"mode": "keda", "minReplicas": 2}}))  # fmt: skip
    spec = r.one("ScaledObject")["spec"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 2)
    r = render(merge(MINIMAL, {"kafka": {"partitions": 12},
                               "autoscaling": {"mode": "hpa", "minReplicas": 3}}))  # fmt: skip
    spec = r.one("HorizontalPodAutoscaler")["spec"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (3, 3)


def test_min_replicas_above_partitions_fails(render_error: RenderErrorFn) -> None:
    err = render_error(merge(MINIMAL, {"kafka": {"partitions": 2},
                                       "autoscaling": {"mode": "keda", "minReplicas": 3}}))  # fmt: skip
    assert "minReplicas (3) exceeds kafka.partitions (2)" in err


def test_no_service_links_in_the_pods(scenarios: dict[str, Rendered]) -> None:
    """A Service named kafka (or kafka-ui...) in the namespace must not reach the worker as
    KAFKA_SERVICE_HOST, KAFKA_PORT...: the worker reads KAFKA_* as librdkafka settings."""
    for r in scenarios.values():
        assert r.pod_spec["enableServiceLinks"] is False


@pytest.mark.parametrize("mode", ["keda", "hpa"])
def test_max_replicas_above_partitions_fails(render_error: RenderErrorFn, mode: str) -> None:
    err = render_error(
        merge(
            MINIMAL,
            {
                "kafka": {"partitions": 6},
                "autoscaling": {
                    "mode": mode,
                    "maxReplicas": 7,
                    "budget": {"requestsPerMinute": None},
                },
            },
        )
    )
    assert "must not exceed kafka.partitions" in err
    assert "(7)" in err
    assert "(6)" in err


@pytest.mark.parametrize("mode", ["keda", "hpa"])
def test_autoscaling_requires_partitions(render_error: RenderErrorFn, mode: str) -> None:
    err = render_error(merge(MINIMAL, {"autoscaling": {"mode": mode}}))
    assert "partitions" in err


def test_replica_count_above_partitions_fails(render_error: RenderErrorFn) -> None:
    err = render_error(merge(MINIMAL, {"replicaCount": 8, "kafka": {"partitions": 4}}))
    assert "replicaCount (8) exceeds kafka.partitions (4)" in err


def test_keda_scale_to_zero_needs_a_topic(render: RenderFn, render_error: RenderErrorFn) -> None:
    regex_topics = {"kafka": {"topics": ["^game-.*"]}, "autoscaling": {"minReplicas": 0}}
    err = render_error(merge(MINIMAL, KEDA, regex_topics))
    assert "minReplicas 0" in err
    r = render(merge(MINIMAL, KEDA, regex_topics, {"autoscaling": {"keda": {"topic": "game-a"}}}))
    assert r.one("ScaledObject")["spec"]["minReplicaCount"] == 0


def test_hpa_mode(scenarios: dict[str, Rendered]) -> None:
    r = scenarios["hpa"]
    assert "replicas" not in r.deployment["spec"], "the HPA owns the replicas"
    assert "ScaledObject" not in r.kinds()
    hpa = r.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == r.deployment["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 24)
    resources = {m["resource"]["name"] for m in hpa["spec"]["metrics"]}
    assert resources == {"cpu", "memory"}


# ------------------------------------------------------------ the schema ----


def test_schema_rejects_batch_over_100(render_error: RenderErrorFn) -> None:
    err = render_error(merge(MINIMAL, {"batch": {"maxEvents": 500}}))
    assert "maxEvents" in err
    assert "100" in err


@pytest.mark.parametrize(
    ("values", "word"),
    [
        ({"batch": {"maxEvents": 0}}, "maxEvents"),
        ({"log": {"level": "TRACE"}}, "level"),
        ({"autoscaling": {"mode": "vpa"}}, "mode"),
        ({"batchSize": 100}, "batchSize"),  # additionalProperties: false
        ({"kafka": {"sasl": {"mechanism": "GSSAPI"}}}, "mechanism"),
        ({"image": {"digest": "latest"}}, "digest"),
        ({"shutdownTimeoutSeconds": "30"}, "shutdownTimeoutSeconds"),
    ],
)
def test_schema_rejects(render_error: RenderErrorFn, values: dict[str, Any], word: str) -> None:
    assert word in render_error(merge(MINIMAL, values))


def _schema_paths(node: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, sub in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        out.add(path)
        if sub.get("additionalProperties") is False:
            out |= _schema_paths(sub, path + ".")
    return out


def _values_paths(node: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in node.items():
        path = f"{prefix}{key}"
        out.add(path)
        sub = schema.get("properties", {}).get(key, {})
        if isinstance(value, dict) and sub.get("additionalProperties") is False:
            out |= _values_paths(value, sub, path + ".")
    return out


def test_schema_and_values_declare_the_same_settings() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert schema["additionalProperties"] is False
    declared = _schema_paths(schema) - {"global"}
    assert declared == _values_paths(values, schema)


def _documented_params() -> list[str]:
    text = (CHART / "values.yaml").read_text()
    return re.findall(r"^\s*## @param (\S+) ", text, flags=re.MULTILINE)


def test_every_value_is_documented() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    params = _documented_params()
    assert len(params) == len(set(params))

    def leaves(node: Any, prefix: str = "") -> list[str]:
        if isinstance(node, dict) and node and not any(p == prefix.rstrip(".") for p in params):
            return [leaf for k, v in node.items() for leaf in leaves(v, f"{prefix}{k}.")]
        return [prefix.rstrip(".")]

    undocumented = [leaf for leaf in leaves(values) if leaf not in params]
    assert not undocumented, f"values without a ## @param line: {undocumented}"
    readme = (CHART / "README.md").read_text()
    guide = (ROOT / "docs" / "deploy.md").read_text()
    for param in params:
        assert f"`{param}`" in readme, f"{param} missing from the chart README table"
        assert f"`{param}`" in guide, f"{param} missing from docs/deploy.md"


# ------------------------------------------------------------- the rest ----


@pytest.mark.parametrize("scenario", ["default", "all-options", "hpa"])
def test_pod_disruption_budget(scenarios: dict[str, Rendered], scenario: str) -> None:
    r = scenarios[scenario]
    pdb = r.one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert pdb["spec"]["selector"]["matchLabels"] == r.deployment["spec"]["selector"]["matchLabels"]


def test_selector_labels_are_stable(scenarios: dict[str, Rendered]) -> None:
    r = scenarios["all-options"]
    selector = r.deployment["spec"]["selector"]["matchLabels"]
    assert set(selector) == {
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/component",
    }
    pod_labels = r.deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    assert r.one("Service")["spec"]["selector"] == selector


def test_names_fit_in_63_characters(render: RenderFn) -> None:
    release = "a-long-release-name-for-the-game-events-consumer-prod"  # helm's limit: 53
    assert len(release) == 53
    r = render(
        merge(MINIMAL, {"api": {"key": "k"}, "grafanaDashboard": {"enabled": True}}),
        release=release,
    )
    names = [doc["metadata"]["name"] for doc in r.docs]
    assert any(len(n) == 63 for n in names), names
    for name in names:
        assert len(name) <= 63
        assert not name.endswith("-")
    assert len(r.docs) == len({(d["kind"], d["metadata"]["name"]) for d in r.docs})


def test_topology_spread(scenarios: dict[str, Rendered]) -> None:
    r = scenarios["default"]
    constraints = r.pod_spec["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in constraints} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    selector = r.deployment["spec"]["selector"]["matchLabels"]
    for c in constraints:
        assert c["whenUnsatisfiable"] == "ScheduleAnyway"
        assert c["labelSelector"]["matchLabels"] == selector


def test_resources_have_requests_and_limits(scenarios: dict[str, Rendered]) -> None:
    res = scenarios["default"].container["resources"]
    assert {"cpu", "memory"} <= set(res["requests"])
    assert "memory" in res["limits"]


def test_dashboard_configmap(scenarios: dict[str, Rendered]) -> None:
    r = scenarios["all-options"]
    dashboards = [c for c in r.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    assert len(dashboards) == 1
    cm = dashboards[0]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    (body,) = cm["data"].values()
    dashboard = json.loads(body)
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    for metric in (
        "gr_events_consumed_total",
        "gr_events_delivered_total",
        "gr_events_dead_lettered_total",
        "gr_api_requests_total",
        "gr_batch_size_events_bucket",
        "gr_api_request_seconds_bucket",
        "gr_delivery_retries_total",
        "gr_partitions_paused",
        "gr_commit_lag",
        "gr_partition_consumer_lag",
        "gr_rate_limit_remaining",
        "gr_rate_limit_limit",
        "gr_request_events_bucket",
        "gr_isolation_requests_total",
        "gr_budget_wait_seconds_total",
        "gr_partition_last_commit_age_seconds",
        "gr_partition_uncommitted_events",
    ):
        assert metric in exprs, f"dashboard does not chart {metric}"
    assert "by (reason)" in exprs
    assert "by (endpoint, status)" in exprs
    # Budget use next to lag, against the budget the chart was given.
    (budget_var,) = [v for v in dashboard["templating"]["list"] if v["name"] == "budget_rpm"]
    assert budget_var["query"] == budget_var["current"]["value"] == "15000"
    (panel,) = [p for p in dashboard["panels"] if p["title"] == "API budget use and lag"]
    panel_exprs = [t["expr"] for t in panel["targets"]]
    assert "/ $budget_rpm" in panel_exprs[0]
    # Lag as the group sees it (log-end minus committed), one report per partition.
    assert "max by (topic, partition) (gr_partition_consumer_lag" in panel_exprs[1]
    assert not [
        c for c in scenarios["default"].of_kind("ConfigMap") if "dashboard" in c["metadata"]["name"]
    ]


def test_service_monitor(scenarios: dict[str, Rendered]) -> None:
    r = scenarios["all-options"]
    sm = r.one("ServiceMonitor")
    (endpoint,) = sm["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    selector = sm["spec"]["selector"]["matchLabels"]
    assert selector.items() <= r.one("Service")["metadata"]["labels"].items()
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert "ServiceMonitor" not in scenarios["default"].kinds()


def test_network_policy_default_opens_only_the_http_port(scenarios: dict[str, Rendered]) -> None:
    np = scenarios["default"].one("NetworkPolicy")
    assert set(np["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    (rule,) = np["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert rule["from"], "ingress is limited to a selector by default"


def test_network_policy_restricted_egress(scenarios: dict[str, Rendered]) -> None:
    np = scenarios["all-options"].one("NetworkPolicy")
    egress = np["spec"]["egress"]
    assert {} not in egress, "allowExternalEgress=false must not allow everything"
    ports = {(p["port"], p["protocol"]) for rule in egress for p in rule.get("ports", [])}
    assert {(53, "UDP"), (53, "TCP"), (9096, "TCP"), (443, "TCP")} <= ports
    assert all(rule.get("to") for rule in egress)


def test_notes(helm: Path) -> None:
    # `helm install --dry-run=client` renders NOTES.txt without a cluster.
    proc = subprocess.run(
        [str(helm), "install", "gr", str(CHART), "-f", str(ALL_OPTIONS), "--dry-run=client"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "KEDA scales them on consumer-group lag, 2 to 12" in notes
    assert "gr-consumer check-config" in notes
    assert API_KEY not in notes
