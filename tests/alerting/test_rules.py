from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrify.alerting.rules import Action, Matcher, default_rules, load_rules, parse_rules
from orchestrify.config_render import render_config
from orchestrify.errors import InvalidSpec


@pytest.mark.parametrize(
    ("text", "labels", "hit"),
    [
        ('alertname="NodeDown"', {"alertname": "NodeDown"}, True),
        ('alertname="NodeDown"', {"alertname": "NodeDownish"}, False),
        ('service=~"web-.*"', {"service": "web-eu"}, True),
        ('service=~"web-.*"', {"service": "api-web-eu"}, False),  # anchored
        ('severity!="info"', {"severity": "warning"}, True),
        ('severity!="info"', {}, True),  # missing label is ""
        ('node!~"lab-.*"', {"node": "lab-3"}, False),
        ("alertname=NodeDown", {"alertname": "NodeDown"}, True),  # unquoted, as amtool allows
        ('replica=""', {}, True),
    ],
)
def test_matcher(text: str, labels: dict[str, str], hit: bool) -> None:
    assert Matcher.parse(text).matches(labels) is hit


def test_default_rules_cover_the_shipped_alerts() -> None:
    rs = default_rules()
    expect = {
        "ServiceLatencyHigh": Action.SCALE_OUT,
        "ServiceRequestRateHigh": Action.SCALE_OUT,
        "ServiceRequestRateLow": Action.SCALE_IN,
        "ReplicaUnhealthy": Action.REPLACE,
        "NodeDown": Action.RESCHEDULE,
        "NodeDiskFull": Action.NOTIFY_ONLY,
        "NodeMemoryPressure": Action.NOTIFY_ONLY,
    }
    for alertname, action in expect.items():
        rule = rs.match({"alertname": alertname, "service": "web"})
        assert rule is not None and rule.action == action


# Shipped alerts that no shipped rule maps, on purpose (docs/monitoring.md says why).
UNMAPPED = {"ControllerLeaderMissing"}  # no leader: nobody to act on it


def test_every_shipped_alert_has_a_rule_that_names_it(tmp_path: Path) -> None:
    """The rendered Prometheus rules and the shipped mapping agree: each alert the rules
    can fire is matched by a rule that names it, and each rule's alert exists."""
    render_config(out_dir=tmp_path, controller_url="http://127.0.0.1:18080", token="t")
    groups = yaml.safe_load((tmp_path / "rules.yml").read_text())["groups"]
    shipped = {rule["alert"] for group in groups for rule in group["rules"]}
    rs = default_rules()
    for alertname in shipped - UNMAPPED:
        rule = rs.match({"alertname": alertname, "service": "web", "node": "n1"})
        assert rule is not None and f'alertname="{alertname}"' in rule.matchers, alertname
    for alertname in UNMAPPED:
        assert rs.match({"alertname": alertname}) is None
    named = {m.split('"')[1] for r in rs.rules for m in r.matchers if m.startswith("alertname=")}
    assert named <= shipped


def test_first_match_wins_and_a_disabled_rule_still_wins() -> None:
    rs = parse_rules(
        {
            "rules": [
                {
                    "name": "off",
                    "matchers": ['service="web"'],
                    "action": "scale_out",
                    "enabled": False,
                },
                {"name": "any", "matchers": ['alertname=~".+"'], "action": "notify_only"},
            ]
        }
    )
    assert rs.match({"alertname": "X", "service": "web"}).name == "off"  # type: ignore[union-attr]
    assert rs.match({"alertname": "X", "service": "api"}).name == "any"  # type: ignore[union-attr]
    assert rs.match({"service": "api"}) is None


@pytest.mark.parametrize(
    ("rule", "field", "words"),
    [
        ({"matchers": ['a="b"'], "action": "explode"}, "rules.0.action", "scale_out"),
        ({"matchers": ["a~b"], "action": "scale_out"}, "rules.0.matchers", "not a matcher"),
        ({"matchers": ['a=~"("'], "action": "scale_out"}, "rules.0.matchers", "regular expression"),
        ({"matchers": [], "action": "scale_out"}, "rules.0.matchers", "at least 1"),
        (
            {"matchers": ['a="b"'], "action": "scale_out", "step": 0},
            "rules.0.step",
            "greater than or equal to 1",
        ),
        ({"matchers": ['a="b"'], "action": "scale_out", "colour": 1}, "rules.0.colour", "Extra"),
        (
            {"matchers": ['a="b"'], "action": "run_playbook"},
            "rules.0.playbook",
            "run_playbook needs a playbook",
        ),
    ],
)
def test_invalid_rules_name_the_field(rule: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        parse_rules({"rules": [{"name": "r", **rule}]})
    assert err.value.field == field
    assert words in str(err.value)


def test_run_playbook_rule_parses() -> None:
    rs = parse_rules(
        {"rules": [{"name": "r", "matchers": ['a="b"'], "action": "run_playbook", "playbook": "p"}]}
    )
    assert rs.rules[0].action == Action.RUN_PLAYBOOK


def test_duplicate_names_and_bad_yaml(tmp_path) -> None:
    with pytest.raises(InvalidSpec, match="used twice"):
        parse_rules({"rules": [{"name": "r", "matchers": ['a="b"'], "action": "scale_in"}] * 2})
    bad = tmp_path / "rules.yml"
    bad.write_text("rules: [\n")
    with pytest.raises(InvalidSpec, match="not valid YAML"):
        load_rules(bad)
