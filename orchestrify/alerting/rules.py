"""Alert -> action rules, as data: label matchers mapped to one action.

Matchers use Alertmanager's own syntax (``alertname="NodeDown"``, ``service=~"web-.*"``,
``severity!="info"``, ``node!~"lab-.*"``), so operators read them as they read their
``inhibit_rules``. Regexes are fully anchored, as in Alertmanager. The first rule whose
matchers all match wins, even when it is disabled (a disabled rule then refuses, so
disabling a rule never lets a later, broader rule catch its alerts by surprise).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from orchestrify.errors import InvalidSpec
from orchestrify.models import FieldError, JsonBool, JsonInt, error_location

DEFAULT_RULES_FILE = Path(__file__).resolve().parent.parent / "controller" / "default_rules.yml"

# The Ansible jobs API (branch `jobs`) flips this when /v1/jobs exists.
JOBS_API_AVAILABLE = True  # the controller runs playbooks through /v1/jobs
RUN_PLAYBOOK_UNAVAILABLE = "run_playbook needs the Ansible jobs API"


class Action(StrEnum):
    SCALE_OUT = "scale_out"
    SCALE_IN = "scale_in"
    REPLACE = "replace"
    RESCHEDULE = "reschedule"
    RUN_PLAYBOOK = "run_playbook"
    NOTIFY_ONLY = "notify_only"


def action_unavailable(action: Action) -> str | None:
    """Why an action cannot be used now, or None. The one place the jobs API flips."""
    if action == Action.RUN_PLAYBOOK and not JOBS_API_AVAILABLE:
        return RUN_PLAYBOOK_UNAVAILABLE
    return None


# Spaces and "any escaped character" are spelled out: Python's \s and . differ from
# those of JSON Schema's ECMA-262 patterns (\u0085 is a space only to Python, \r ends
# "." only in ECMA), and MATCHER_PATTERN below must accept exactly what this does.
_SP = r"[ \t\n\r\f\v]"
_NON_SP = r"[^ \t\n\r\f\v]"
_ESCAPED = r"\\[^\n\r\u2028\u2029]"
_MATCHER = re.compile(
    rf"""^{_SP}*(?P<label>[A-Za-z_][A-Za-z0-9_]*){_SP}*(?P<op>=~|!~|!=|=){_SP}*"""
    rf"""(?:"(?P<quoted>(?:[^"\\]|{_ESCAPED})*)"|(?P<bare>[^" \t\n\r\f\v]{_NON_SP}*)?){_SP}*$"""
)


# _MATCHER without VERBOSE and named groups: the schema's pattern of a matcher.
MATCHER_PATTERN = (
    rf"""^{_SP}*[A-Za-z_][A-Za-z0-9_]*{_SP}*(=~|!~|!=|=){_SP}*"""
    rf"""("([^"\\]|{_ESCAPED})*"|[^" \t\n\r\f\v]{_NON_SP}*)?{_SP}*$"""
)


class Matcher(BaseModel):
    """One ``label op value`` test on an alert's labels."""

    model_config = ConfigDict(frozen=True)

    label: str
    op: Literal["=", "!=", "=~", "!~"]
    value: str
    _regex: re.Pattern[str] | None = PrivateAttr(None)

    @classmethod
    def parse(cls, text: str) -> Matcher:
        m = _MATCHER.match(text)
        if m is None:
            raise ValueError(f'{text!r} is not a matcher like alertname="X" or service=~"web-.*"')
        quoted = m.group("quoted")
        value = (
            quoted.replace('\\"', '"').replace("\\\\", "\\")
            if quoted is not None
            else (m.group("bare") or "")
        )
        matcher = cls(label=m.group("label"), op=m.group("op"), value=value)
        if matcher.op in ("=~", "!~"):
            try:
                matcher._regex = re.compile(f"(?:{value})")
            except re.error as exc:
                raise ValueError(f"{text!r}: bad regular expression: {exc}") from exc
        return matcher

    def matches(self, labels: Mapping[str, str]) -> bool:
        # As in Alertmanager, a missing label is the empty string.
        got = labels.get(self.label, "")
        if self._regex is not None:
            hit = self._regex.fullmatch(got) is not None
            return hit if self.op == "=~" else not hit
        return got == self.value if self.op == "=" else got != self.value

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.label}{self.op}"{escaped}"'


class AlertRule(BaseModel):
    """One mapping from label matchers to an action with its parameters."""

    # run_playbook needs a playbook: stated in the schema as well (_action_params)
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "if": {"properties": {"action": {"const": "run_playbook"}}, "required": ["action"]},
            "then": {
                "required": ["playbook"],
                "properties": {"playbook": {"type": "string", "minLength": 1}},
            },
        },
    )

    name: str = Field(min_length=1, max_length=100)
    matchers: list[str] = Field(
        min_length=1,
        description="All must match (Alertmanager syntax). A regex (=~, !~) must compile "
        "as a Python regular expression, which no JSON Schema pattern can state.",
        json_schema_extra={"items": {"type": "string", "pattern": MATCHER_PATTERN}},
    )
    action: Action
    enabled: JsonBool = True
    step: JsonInt = Field(
        1, ge=1, le=100, description="scale_out/scale_in: replicas per action (capped by policy)."
    )
    scope: Literal["service", "all"] = Field(
        "service",
        description="reschedule: the alert's service's replicas on the node, or all of them.",
    )
    playbook: str | None = Field(None, description="run_playbook: playbook path.")
    limit: str | None = Field(None, description="run_playbook: inventory limit.")
    extra_vars: dict[str, Any] = Field(default_factory=dict, description="run_playbook.")
    description: str = ""
    _parsed: tuple[Matcher, ...] = PrivateAttr(())

    @field_validator("matchers")
    @classmethod
    def _matchers(cls, v: list[str]) -> list[str]:
        for text in v:
            Matcher.parse(text)  # raises ValueError naming the bad matcher
        return v

    @model_validator(mode="after")
    def _action_params(self) -> AlertRule:
        why = action_unavailable(self.action)
        if why is not None:
            raise FieldError("action", why)
        if self.action == Action.RUN_PLAYBOOK and not self.playbook:
            raise FieldError("playbook", "run_playbook needs a playbook")
        self._parsed = tuple(Matcher.parse(t) for t in self.matchers)
        return self

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(m.matches(labels) for m in self._parsed)


class RuleSet(BaseModel):
    """The whole mapping, in order: the first matching rule wins."""

    model_config = ConfigDict(extra="forbid")

    rules: list[AlertRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> RuleSet:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise FieldError("rules", f"rule name {rule.name!r} is used twice")
            seen.add(rule.name)
        return self

    def match(self, labels: Mapping[str, str]) -> AlertRule | None:
        for rule in self.rules:
            if rule.matches(labels):
                return rule
        return None


def parse_rules(data: Any) -> RuleSet:
    """Validate rules from YAML/JSON data; InvalidSpec names the offending field."""
    if not isinstance(data, dict):
        raise InvalidSpec("rules: expected a mapping with a 'rules' list", field="rules")
    try:
        return RuleSet.model_validate(data)
    except ValueError as exc:  # pydantic.ValidationError
        errors = getattr(exc, "errors", None)
        if not callable(errors):
            raise InvalidSpec(str(exc)) from exc
        first = errors()[0]
        loc = ".".join(error_location(first))
        msg = str(first.get("msg", exc)).removeprefix("Value error, ")
        raise InvalidSpec(f"{loc}: {msg}" if loc else msg, field=loc or None) from exc


def load_rules(path: Path) -> RuleSet:
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidSpec(f"cannot read rules file {path}: {exc.strerror}", field="rules") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidSpec(f"{path}: not valid YAML: {exc}", field="rules") from exc
    try:
        return parse_rules(data)
    except InvalidSpec as exc:
        raise InvalidSpec(f"{path}: {exc}", field=exc.field) from exc


def default_rules() -> RuleSet:
    return load_rules(DEFAULT_RULES_FILE)


def describe(rule: AlertRule) -> str:
    """Parameters of a rule in one short phrase (CLI tables, event messages)."""
    match rule.action:
        case Action.SCALE_OUT | Action.SCALE_IN:
            return f"step={rule.step}"
        case Action.RESCHEDULE:
            return f"scope={rule.scope}"
        case Action.RUN_PLAYBOOK:
            return f"playbook={rule.playbook}" + (f" limit={rule.limit}" if rule.limit else "")
    return ""


__all__: Sequence[str] = [
    "Action",
    "AlertRule",
    "Matcher",
    "RuleSet",
    "default_rules",
    "load_rules",
    "parse_rules",
]
