"""The view model the templates see, and the render from the shipped templates."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrify.edge.render import NginxRenderSettings, nginx_templates_dir, render_nginx
from orchestrify.edge.view import AddressBook, build_view, removed_replicas, valid_address
from orchestrify.errors import InvalidSpec
from orchestrify.models import Upstreams

SETTINGS = NginxRenderSettings(
    listen="8080",
    domain="example.test",
    pid_file="/run/x/nginx.pid",
    error_log="/run/x/error.log",
    temp_dir="/run/x/tmp",
    access_log="/run/x/tmp/telemetry.log",
)


def upstreams(*replicas: tuple[str, str], empty: bool = False) -> Upstreams:
    services = [
        {
            "name": "web",
            "port": 8000,
            "drain_s": 5,
            "replicas": [
                {"id": rid, "address": addr, "node": "n1", "node_name": "worker-1"}
                for rid, addr in replicas
            ],
        }
    ]
    if empty:
        services.append({"name": "idle-svc", "port": 80, "drain_s": 1, "replicas": []})
    return Upstreams.model_validate({"version": 1, "services": services})


def test_view_keeps_only_what_templates_need_sorted_and_valid() -> None:
    view = build_view(
        upstreams(
            ("web-b", "10.0.0.2:31000"),
            ("web-a", "10.0.0.1:31000"),
            ("web-bad", "10.0.0.3:31000; evil"),
            ("web-dup", "10.0.0.1:31000"),
        )
    )
    (svc,) = view.services
    assert svc.upstream == "orchestrify_web"
    assert [(s.replica, s.address, s.node, s.state) for s in svc.servers] == [
        ("web-a", "10.0.0.1:31000", "worker-1", "healthy"),
        ("web-b", "10.0.0.2:31000", "worker-1", "healthy"),
    ]


@pytest.mark.parametrize(
    ("address", "ok"),
    [
        ("127.0.0.1:8000", True),
        ("host-1.lan:443", True),
        ("[::1]:8000", True),
        ("127.0.0.1", False),
        ("127.0.0.1:0", False),
        ("127.0.0.1:70000", False),
        ("a b:80", False),
        ("x;y:80", False),
    ],
)
def test_valid_address(address: str, ok: bool) -> None:
    assert valid_address(address) is ok


def test_removed_replicas_and_address_book() -> None:
    before = build_view(upstreams(("web-a", "10.0.0.1:1"), ("web-b", "10.0.0.2:1")))
    after = build_view(upstreams(("web-a", "10.0.0.1:1")))
    assert removed_replicas(before, after) == ["web-b"]
    assert removed_replicas(after, before) == []
    book = AddressBook()
    book.update(before)
    book.update(after)
    ref = book.lookup("web", "10.0.0.2:1")  # kept: its last requests still get its name
    assert ref is not None and (ref.replica, ref.node) == ("web-b", "worker-1")
    assert book.lookup("other", "10.0.0.2:1") is None


def test_render_is_stable_and_routes_every_service() -> None:
    view = build_view(upstreams(("web-a", "10.0.0.1:31000"), empty=True))
    first = render_nginx(view, SETTINGS)
    assert first == render_nginx(view, SETTINGS)  # same input, same bytes: no reload
    conf, ups = first.files["nginx.conf"], first.files["upstreams.conf"]
    assert "server 10.0.0.1:31000 max_fails=1" in ups
    assert "orchestrify_idle_svc" not in ups  # no empty upstream block
    assert "server_name web.example.test;" in conf
    assert "location /web/ {" in conf and "proxy_pass http://orchestrify_web/;" in conf
    assert 'return 503 "service idle-svc has no healthy replica right now\\n";' in conf
    assert "proxy_next_upstream error timeout http_502 http_503;" in conf
    assert f'return 200 "ok {first.config_id}\\n";' in conf
    other = render_nginx(build_view(upstreams(("web-a", "10.0.0.1:31001"))), SETTINGS)
    assert other.config_id != first.config_id


def test_templates_are_found_from_the_package() -> None:
    assert (nginx_templates_dir() / "upstreams.conf.j2").is_file()


def test_broken_template_is_an_invalid_spec(tmp_path: Path) -> None:
    (tmp_path / "nginx.conf.j2").write_text("{{ nope }}")
    (tmp_path / "upstreams.conf.j2").write_text("")
    with pytest.raises(InvalidSpec, match=r"nginx.conf.j2.*failed to render"):
        render_nginx(build_view(upstreams()), SETTINGS, templates_dir=tmp_path)
