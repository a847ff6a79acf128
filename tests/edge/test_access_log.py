"""The JSON access log (`--access-log`): its path is checked before it reaches nginx.conf,
and the render writes it beside the telemetry log, in every place and only when set."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import ValidationError

from orchestrify.edge import EdgeSettings
from orchestrify.edge.access_log import ACCESS_LOG_FIELDS, NUMERIC_FIELDS, check_access_log_path
from orchestrify.edge.render import NginxRenderSettings, render_nginx, replica_of_address
from orchestrify.edge.view import build_view, valid_address
from orchestrify.errors import InvalidSpec
from orchestrify.models import Upstreams

TELEMETRY = "/run/x/tmp/telemetry.log"
SETTINGS = NginxRenderSettings(
    listen="8080",
    domain="example.test",
    pid_file="/run/x/nginx.pid",
    error_log="/run/x/error.log",
    temp_dir="/run/x/tmp",
    access_log=TELEMETRY,
)
JSON_LOG = "/var/log/orchestrify-edge/access.log"


def upstreams() -> Upstreams:
    """Two services with replicas (one address twice, in another case) and one without."""
    replica = {"node": "n1", "node_name": "worker-1"}
    return Upstreams.model_validate(
        {
            "version": 1,
            "services": [
                {
                    "name": "web",
                    "port": 80,
                    "drain_s": 1,
                    "replicas": [
                        {"id": "web-1a2b3c4d", "address": "10.0.0.1:31000", **replica},
                        {"id": "web-5e6f7a8b", "address": "Host-1.lan:31001", **replica},
                    ],
                },
                {
                    "name": "api",
                    "port": 80,
                    "drain_s": 1,
                    "replicas": [{"id": "api-0f0f0f0f", "address": "host-1.LAN:31001", **replica}],
                },
                {"name": "idle", "port": 80, "drain_s": 1, "replicas": []},
            ],
        }
    )


def conf(**settings: object) -> str:
    return render_nginx(build_view(upstreams()), replace(SETTINGS, **settings)).files["nginx.conf"]


def log_lines(text: str, log_format: str) -> list[str]:
    return re.findall(rf"^ +access_log (\S+) {log_format} buffer=64k flush=1s;$", text, re.M)


def test_without_the_option_nothing_of_it_is_rendered() -> None:
    text = conf()
    assert "orchestrify_json" not in text and "map_hash_bucket_size" not in text
    assert "$orchestrify_log_" not in text
    # The telemetry log stays where it was: every proxied or 503 location, once.
    assert log_lines(text, "orchestrify") == [TELEMETRY] * 6


def test_with_the_option_every_telemetry_log_has_a_json_log_beside_it() -> None:
    text = conf(json_access_log=JSON_LOG)
    assert log_lines(text, "orchestrify") == [TELEMETRY] * 6
    assert log_lines(text, "orchestrify_json") == [JSON_LOG] * 6
    blocks = re.findall(r"location [^{]*\{[^}]*\}", text)
    for block in blocks:  # each request is logged once in each file, or not at all
        assert block.count(f"access_log {TELEMETRY} ") == block.count(f"access_log {JSON_LOG} ")
        assert block.count(f"access_log {JSON_LOG} ") <= 1
    assert text.count("log_format orchestrify_json escape=json") == 1
    # The health check, the /NAME redirects and unknown services are in neither (as the
    # telemetry: only requests meant for a service).
    for block in blocks:
        if "proxy_pass" not in block and "has no healthy replica" not in block:
            assert "access_log" not in block, block


def test_telemetry_off_keeps_the_json_log() -> None:
    text = conf(access_log="off", json_access_log=JSON_LOG)
    assert log_lines(text, "orchestrify") == []
    assert log_lines(text, "orchestrify_json") == [JSON_LOG] * 6


def test_the_log_format_is_one_json_object_with_the_documented_fields() -> None:
    text = conf(json_access_log=JSON_LOG)
    found = re.search(r"log_format orchestrify_json escape=json\n((?: +'[^']*'\n?)+);", text)
    assert found, text
    template = "".join(re.findall(r"'([^']*)'", found.group(1)))
    # Nginx puts each variable's value where it stands: every one in a string field is
    # inside quotes, every one in a number field is bare (and always a number).
    line = json.loads(re.sub(r"\$[a-z0-9_]+", "7", template))
    assert tuple(line) == ACCESS_LOG_FIELDS
    assert {k for k, v in line.items() if v == 7} == NUMERIC_FIELDS
    assert all(v == "7" for k, v in line.items() if k not in NUMERIC_FIELDS)
    assert '"status":$orchestrify_log_status,' in template  # "000" made a number
    assert '"request_id":"$orchestrify_request_id"' in template  # the id the replica got


def test_replicas_are_mapped_by_address_once_each() -> None:
    view = build_view(upstreams())
    # Nginx compares map keys without case, and refuses a config with a key twice.
    assert replica_of_address(view) == [
        ("10.0.0.1:31000", "web-1a2b3c4d"),
        ("host-1.LAN:31001", "api-0f0f0f0f"),
    ]
    text = conf(json_access_log=JSON_LOG)
    assert '        "10.0.0.1:31000" "web-1a2b3c4d";\n' in text
    assert '        "host-1.LAN:31001" "api-0f0f0f0f";\n' in text


def test_a_replica_id_or_address_nginx_could_misread_stays_out_of_the_config() -> None:
    bad = Upstreams.model_validate(
        {
            "version": 1,
            "services": [
                {
                    "name": "web",
                    "port": 80,
                    "drain_s": 1,
                    "replicas": [
                        {"id": 'web-a" "x', "address": "10.0.0.1:1", "node": "n"},
                        {"id": "web-b\n}", "address": "10.0.0.2:1", "node": "n"},
                        {"id": "web-c", "address": "10.0.0.3:1\n", "node": "n"},
                        {"id": "web-d", "address": "10.0.0.4:1", "node": "n"},
                    ],
                }
            ],
        }
    )
    (svc,) = build_view(bad).services
    assert [s.replica for s in svc.servers] == ["web-d"]
    assert not valid_address("10.0.0.1:80\n")


def test_a_template_without_the_json_log_is_refused_when_it_is_asked_for(tmp_path: Path) -> None:
    (tmp_path / "nginx.conf.j2").write_text("events {}\nhttp {}\n")
    (tmp_path / "upstreams.conf.j2").write_text("")
    view = build_view(upstreams())
    render_nginx(view, SETTINGS, templates_dir=tmp_path)  # not asked for: fine
    with pytest.raises(InvalidSpec, match=r"does not write the access log"):
        render_nginx(view, replace(SETTINGS, json_access_log=JSON_LOG), templates_dir=tmp_path)


def test_a_good_path_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "edge-access.json"
    assert check_access_log_path(str(path)) == path
    path.write_text("")  # an existing file it can append to
    assert check_access_log_path(str(path)) == path


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("a b.log", "has ' '"),
        ('a".log', "has '\"'"),
        ("a'.log", 'has "\'"'),
        ("a{b}.log", "has '{', '}'"),
        ("a;b.log", "has ';'"),
        ("$host.log", "has '$'"),
        ("a#b.log", "has '#'"),
        ("a\\b.log", "has '\\\\'"),
        ("a\nb.log", "has '\\n'"),
        ("a\x01b.log", "has '\\x01'"),
        ("a\tb.log", "has '\\t'"),
        ("nope/a.log", "does not exist"),
        ("", "is a directory"),
    ],
)
def test_a_bad_path_is_refused_in_one_line(tmp_path: Path, name: str, says: str) -> None:
    with pytest.raises(ValueError) as err:
        check_access_log_path(f"{tmp_path}/{name}")
    message = str(err.value)
    assert says in message and "\n" not in message, message


def test_a_relative_path_or_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="want an absolute path"):
        check_access_log_path("access.log")
    with pytest.raises(ValueError, match="is a directory"):
        check_access_log_path(str(tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_directory_this_user_cannot_write_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    with pytest.raises(ValueError, match="is not writable"):
        check_access_log_path(str(folder / "a.log"))


def test_the_setting_is_checked_and_empty_means_off(tmp_path: Path) -> None:
    base = {"controller_url": "http://127.0.0.1:1", "token": "t", "nginx_conf_dir": tmp_path}
    assert EdgeSettings(**base).access_log is None
    assert EdgeSettings(**base, access_log="").access_log is None
    good = tmp_path / "access.json"
    assert EdgeSettings(**base, access_log=str(good)).access_log == good
    with pytest.raises(ValidationError, match=r"cannot go into nginx\.conf"):
        EdgeSettings(**base, access_log=f"{tmp_path}/a;b")
