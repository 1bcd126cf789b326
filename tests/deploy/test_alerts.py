"""The chart's alert rules, checked and unit-tested by promtool.

promtool is built from the Go module proxy by scripts/deploy-tools.sh (pinned by
tests/deploy/promtool/go.mod and go.sum). The rule is rendered by helm, its
`spec` written as a Prometheus rule file, then `promtool check rules` (syntax,
PromQL) and `promtool test rules tests/deploy/alerts/rules-test.yaml` (series
in, alerts out) run on it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import CI_VALUES, RenderFn

ALERTS = Path(__file__).resolve().parent / "alerts"
# The alerts an operator needs, by the metrics they watch.
EXPECTED = {
    "GrS2SConsumerLagGrowing": "gr_partition_consumer_lag",
    "GrS2SConsumerNoCommitProgress": "gr_partition_committed_offset",
    "GrS2SConsumerApiKeyRefused": "gr_api_key_refused",
    "GrS2SConsumerDeadLettering": "gr_events_dead_lettered_total",
    "GrS2SConsumerDlqWriteFailing": "gr_dlq_write_failing",
    "GrS2SConsumerRateLimited": 'status="429"',
}


@pytest.fixture(scope="module")
def promtool() -> Path:
    named = os.environ.get("GR_PROMTOOL")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    built = cache / "gr-s2s-consumer" / "tools" / "bin" / "promtool"
    found = Path(named) if named else built if built.exists() else None
    if found is None and (on_path := shutil.which("promtool")):
        found = Path(on_path)
    if found is None:
        message = "promtool not found: run scripts/deploy-tools.sh, or set GR_PROMTOOL"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set, so a missing promtool is a failure)")
        pytest.skip(message)
    return found


def _rule_file(render: RenderFn, tmp_path: Path, **values: object) -> Path:
    r = render(
        {"metrics": {"prometheusRule": {"enabled": True, **values}}},
        files=[CI_VALUES / "default-values.yaml"],
    )
    rule = r.one("PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    return path


def _promtool(promtool: Path, *args: str) -> str:
    proc = subprocess.run(
        [str(promtool), *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_rules_pass_promtool_check(promtool: Path, render: RenderFn, tmp_path: Path) -> None:
    rules = _rule_file(render, tmp_path)
    out = _promtool(promtool, "check", "rules", str(rules))
    assert f"SUCCESS: {len(EXPECTED)} rules found" in out
    spec = yaml.safe_load(rules.read_text())
    by_name = {r["alert"]: r for g in spec["groups"] for r in g["rules"]}
    assert set(by_name) == set(EXPECTED)
    for name, metric in EXPECTED.items():
        assert metric in by_name[name]["expr"], name
        # Scoped to this release's series.
        assert 'namespace="gr-s2s-consumer", job="gr-s2s-consumer"' in by_name[name]["expr"]


def test_alerts_fire_as_the_unit_tests_say(
    promtool: Path, render: RenderFn, tmp_path: Path
) -> None:
    _rule_file(render, tmp_path)
    shutil.copy(ALERTS / "rules-test.yaml", tmp_path / "rules-test.yaml")
    out = _promtool(promtool, "test", "rules", str(tmp_path / "rules-test.yaml"))
    assert "SUCCESS" in out


def test_all_options_rules_pass_promtool_check(
    promtool: Path, render: RenderFn, tmp_path: Path
) -> None:
    r = render(files=[CI_VALUES / "all-options-values.yaml"])
    rule = r.one("PrometheusRule")
    assert rule["metadata"]["namespace"] == "game-analytics"  # the chart's namespace
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    _promtool(promtool, "check", "rules", str(path))
    for group in rule["spec"]["groups"]:
        for alert in group["rules"]:
            assert alert["labels"]["team"] == "data-platform"


def test_custom_selector(promtool: Path, render: RenderFn, tmp_path: Path) -> None:
    rules = _rule_file(render, tmp_path, selector='namespace="games", service="gr"')
    spec = yaml.safe_load(rules.read_text())
    for alert in (r for g in spec["groups"] for r in g["rules"]):
        assert 'job="gr-s2s-consumer"' not in alert["expr"]
        assert '{namespace="games", service="gr"' in alert["expr"], alert["alert"]
    _promtool(promtool, "check", "rules", str(rules))
