"""Alert rules and every PromQL expression, checked with Prometheus's own ``promtool``.

- The PrometheusRule's ``spec`` (from the rendered prod overlay) passes ``promtool check
  rules`` and the unit tests in ``deploy/monitoring/tests/samserve-rules.test.yml``.
- Every expression of the ScaledObjects, the dashboard and the rules parses: they are written
  as recording rules into a temporary file, which ``promtool check rules`` parses with the
  real PromQL parser (Grafana's variables filled in as Grafana would).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.manifests import (
    DEPLOY,
    by_kind,
    concrete,
    condition_operands,
    dashboard,
    dashboard_panels,
    expressions,
    promtool,
    render,
)

yaml = pytest.importorskip("yaml", reason="pip install pyyaml")


def _rules_spec() -> dict:
    (rule,) = by_kind(render("prod"), "PrometheusRule")
    return rule["spec"]


def _run(args: list[str], cwd: Path) -> str:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return out


def test_alert_rules_pass_promtool_check(tmp_path):
    (tmp_path / "samserve.rules.yml").write_text(yaml.safe_dump(_rules_spec()))
    out = _run([promtool(), "check", "rules", "samserve.rules.yml"], tmp_path)
    assert "SUCCESS" in out


def test_alert_rules_unit_tests(tmp_path):
    tests = DEPLOY / "monitoring" / "tests" / "samserve-rules.test.yml"
    spec = yaml.safe_load(tests.read_text())
    tested = {t["alertname"] for case in spec["tests"] for t in case["alert_rule_test"]}
    assert len(tested) >= 2, tested
    assert tested <= {r["alert"] for g in _rules_spec()["groups"] for r in g["rules"]}
    (tmp_path / "samserve.rules.yml").write_text(yaml.safe_dump(_rules_spec()))
    shutil.copy(tests, tmp_path / tests.name)
    out = _run([promtool(), "test", "rules", tests.name], tmp_path)
    assert "SUCCESS" in out


def test_every_promql_expression_parses(tmp_path):
    exprs = expressions(render("prod"))
    kinds = {e.where.split()[0] for e in exprs}
    assert kinds == {"ScaledObject/samserve-triton", "ScaledObject/samserve-decoder",
                     "ScaledObject/samserve-embedding", "dashboard", "rule"}, kinds  # fmt: skip
    rules = [
        {"record": f"samserve_check:expr_{i}", "expr": concrete(e.expr)}
        for i, e in enumerate(exprs)
    ]
    # An alert's operands are evaluated on their own by the live test: they must parse too.
    rules += [
        {"record": f"samserve_check:operand_{i}_{j}", "expr": concrete(op)}
        for i, e in enumerate(exprs) if e.alert
        for j, op in enumerate(condition_operands(e.expr))
    ]  # fmt: skip
    path = tmp_path / "expressions.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
    out = _run([promtool(), "check", "rules", path.name], tmp_path)
    assert f"SUCCESS: {len(rules)} rules found" in out, out


def test_promtool_rejects_a_broken_expression(tmp_path):
    """The parse check above would catch a slip (the check itself is not vacuous)."""
    path = tmp_path / "broken.rules.yml"
    bad = {"record": "x:y", "expr": "sum(rate(samserve_requests_total[5m])"}
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": [bad]}]}))
    proc = subprocess.run([promtool(), "check", "rules", path.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode != 0


def test_dashboard_structure():
    dash = dashboard(render("prod"))
    assert dash["uid"] == "samserve-overview"
    ids = [p["id"] for p in dashboard_panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    titles = " ".join(p["title"].lower() for p in dashboard_panels(dash))
    for topic in ("request rate", "latency", "error", "cache", "queue", "batch size",
                  "compute time", "gpu"):  # fmt: skip
        assert topic in titles, topic
    for p in dashboard_panels(dash):
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert variables == {"datasource", "namespace"}


def test_condition_operands():
    assert condition_operands("max by (ns) (x) == 0") == ["max by (ns) (x)"]
    assert condition_operands('a{code=~"A|B"} / b > 0.05') == ['a{code=~"A|B"} / b']
    assert condition_operands("(x or y * 0) < 0.5 * z and w > 0.1") == [
        "(x or y * 0)", "0.5 * z", "w",
    ]  # fmt: skip
    assert condition_operands("a > bool 3") == ["a"]
    assert condition_operands("a and on(x) b") == ["a", "b"]


def test_concrete_fills_variables_and_windows():
    assert concrete('rate(x{namespace="$namespace"}[$__rate_interval])', "20s") == (
        'rate(x{namespace="samserve"}[20s])'
    )
    assert concrete("rate(x[5m]) / rate(x[1d])", "20s") == "rate(x[20s]) / rate(x[20s])"


@pytest.mark.parametrize("alert", ["SamserveRedisDown", "SamserveHighErrorRate"])
def test_unit_tested_alerts_exist(alert):
    assert alert in {r.get("alert") for g in _rules_spec()["groups"] for r in g["rules"]}
