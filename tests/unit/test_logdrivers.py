"""Log drivers: what the border accepts, and what the agent hands Docker."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from orchestrify.agent.docker_engine import ContainerSpec
from orchestrify.logdrivers import LOG_DRIVERS, log_opts_problem
from orchestrify.models import ServiceSpec, container_spec, spec_hash


@pytest.mark.parametrize(
    ("driver", "opts"),
    [
        ("json-file", {}),
        ("json-file", {"max-size": "50m", "max-file": "5", "compress": "true"}),
        ("local", {"max-size": "20m"}),
        ("journald", {"tag": "{{.Name}}"}),
        ("syslog", {"syslog-address": "udp://10.0.0.5:514", "syslog-facility": "local3"}),
        ("syslog", {"syslog-address": "tcp+tls://logs:6514", "syslog-facility": "19"}),
        ("gelf", {"gelf-address": "udp://127.0.0.1:12201", "gelf-compression-level": "-1"}),
        ("fluentd", {"fluentd-address": "logs.example:24224", "mode": "non-blocking"}),
        ("fluentd", {"mode": "non-blocking", "max-buffer-size": "4m"}),
    ],
)
def test_options_docker_takes_pass(driver: str, opts: dict[str, str]) -> None:
    assert log_opts_problem(driver, opts) is None


@pytest.mark.parametrize(
    ("driver", "opts", "named"),
    [
        ("splunk", {}, "splunk"),
        ("json-file", {"max-szie": "10m"}, "max-szie"),
        ("local", {"tag": "x"}, "tag"),  # local keeps no tag
        ("gelf", {}, "gelf-address"),
        ("gelf", {"gelf-address": "http://x:12201"}, "gelf-address"),
        ("gelf", {"gelf-address": "udp://x", "gelf-compression-type": "lz4"}, "lz4"),
        ("gelf", {"gelf-address": "udp://x", "gelf-compression-level": "10"}, "level"),
        ("syslog", {"syslog-facility": "24"}, "syslog-facility"),
        ("syslog", {"syslog-address": "udp://"}, "syslog-address"),
        ("json-file", {"max-buffer-size": "4m"}, "non-blocking"),
        ("json-file", {"mode": "sometimes"}, "mode"),
        ("json-file", {"tag": "a\nb"}, "tag"),
        ("json-file", {"tag": "x" * 1025}, "tag"),
    ],
)
def test_a_wrong_driver_or_option_is_named(driver: str, opts: dict[str, str], named: str) -> None:
    problem = log_opts_problem(driver, opts)
    assert problem is not None and named in problem


def test_every_driver_takes_the_delivery_mode() -> None:
    for driver, known in LOG_DRIVERS.items():
        assert {"mode", "max-buffer-size"} <= known, driver


def test_the_spec_names_the_field_at_fault() -> None:
    with pytest.raises(ValidationError) as bad_driver:
        ServiceSpec(name="web", image="nginx", log_driver="splunk")  # type: ignore[arg-type]
    assert bad_driver.value.errors()[0]["loc"] == ("log_driver",)
    with pytest.raises(ValidationError) as bad_opt:
        ServiceSpec(name="web", image="nginx", log_opts={"nope": "1"})
    assert "nope" in str(bad_opt.value)


def test_a_spec_stored_before_log_drivers_keeps_its_hash() -> None:
    """Replicas started before the upgrade must not look outdated (and be replaced)."""
    old = {"image": "nginx:1.27", "env": {"A": "1"}, "port": 80, "health_path": "/"}
    new = ServiceSpec(name="web", image="nginx:1.27", env={"A": "1"}, port=80, health_path="/")
    assert spec_hash(old) == spec_hash(new.model_dump())
    assert container_spec(old)["log_driver"] == "json-file"
    gelf = new.model_copy(update={"log_driver": "gelf", "log_opts": {"gelf-address": "udp://h"}})
    assert spec_hash(gelf.model_dump()) != spec_hash(old)
    opts = new.model_copy(update={"log_opts": {"max-size": "1m"}})
    assert spec_hash(opts.model_dump()) != spec_hash(old)


def _container(**kw: Any) -> ContainerSpec:
    return ContainerSpec(
        name="n", image="i", env={}, port=80, host_port=None, bind_address="", labels={}, **kw
    )


def test_json_file_keeps_the_agents_rotation_unless_the_service_sets_its_own() -> None:
    base = _container(log_max_size="7m")
    assert base.log_config().type == "json-file"
    assert base.log_config().config == {"max-size": "7m", "max-file": "3"}
    own = _container(log_opts={"max-size": "1g", "compress": "true"})
    assert own.log_config().config == {"max-size": "1g", "max-file": "3", "compress": "true"}
    gelf = _container(log_driver="gelf", log_opts={"gelf-address": "udp://127.0.0.1:1"})
    assert (gelf.log_config().type, gelf.log_config().config) == (
        "gelf",
        {"gelf-address": "udp://127.0.0.1:1"},
    )
