"""The applier with a fake Nginx: unchanged, refused, swapped, rolled back."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from orchestrify.edge.apply import ConfigApplier
from orchestrify.errors import NginxFailure


@dataclass
class FakeNginx:
    live: bool = True
    refuse: str | None = None  # `nginx -t` says this
    reload_error: str | None = None
    serves: bool = True  # the reloaded config shows up on the health location
    log_errors: str = ""  # what its error log says since the reload
    calls: list[str] = field(default_factory=list)
    tested: list[dict[str, str]] = field(default_factory=list)

    async def test(self, conf: Path) -> None:
        self.calls.append("test")
        self.tested.append({p.name: p.read_text() for p in conf.parent.iterdir()})
        if self.refuse:
            raise NginxFailure(self.refuse)

    def running(self) -> bool:
        return self.live

    async def start(self) -> None:
        self.calls.append("start")
        self.live = True

    async def reload(self) -> None:
        self.calls.append("reload")
        if self.reload_error:
            raise NginxFailure(self.reload_error)

    async def wait_serving(self, config_id: str, *, timeout_s: float) -> bool:
        self.calls.append(f"verify {config_id}")
        return self.serves

    def errors_since_reload(self) -> str:
        return self.log_errors


FILES = {"upstreams.conf": "upstream a {}\n", "nginx.conf": "include upstreams.conf;\n"}


def _apply(applier: ConfigApplier, files: dict[str, str], cid: str = "c1"):  # type: ignore[no-untyped-def]
    return asyncio.run(applier.apply(files, config_id=cid))


def test_first_apply_starts_nginx_then_unchanged_bytes_do_nothing(tmp_path: Path) -> None:
    nginx = FakeNginx(live=False)
    applier = ConfigApplier(conf_dir=tmp_path, nginx=nginx)
    result = _apply(applier, FILES)
    assert result.ok and result.changed
    assert nginx.calls == ["test", "start", "verify c1"]
    assert nginx.tested == [FILES]  # nginx -t saw exactly the bytes that went live
    assert (tmp_path / "nginx.conf").read_text() == FILES["nginx.conf"]
    nginx.calls.clear()
    again = _apply(applier, FILES)
    assert again.ok and not again.changed and nginx.calls == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nginx.conf", "upstreams.conf"]


def test_change_is_tested_swapped_reloaded_and_verified(tmp_path: Path) -> None:
    nginx = FakeNginx()
    applier = ConfigApplier(conf_dir=tmp_path, nginx=nginx)
    _apply(applier, FILES)
    nginx.calls.clear()
    new = {**FILES, "upstreams.conf": "upstream b {}\n"}
    result = _apply(applier, new, "c2")
    assert result.ok and result.changed
    assert nginx.calls == ["test", "reload", "verify c2"]
    assert (tmp_path / "upstreams.conf").read_text() == "upstream b {}\n"


def test_refused_config_never_reaches_the_live_files(tmp_path: Path) -> None:
    nginx = FakeNginx()
    applier = ConfigApplier(conf_dir=tmp_path, nginx=nginx)
    _apply(applier, FILES)
    nginx.calls.clear()
    nginx.refuse = 'nginx: [emerg] unknown directive "bogus"'
    result = _apply(applier, {**FILES, "upstreams.conf": "bogus;\n"}, "c2")
    assert not result.ok and not result.changed and result.stage == "test"
    assert result.error is not None and "bogus" in result.error
    assert nginx.calls == ["test"]
    assert (tmp_path / "upstreams.conf").read_text() == FILES["upstreams.conf"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nginx.conf", "upstreams.conf"]


def test_failed_reload_restores_the_last_good_config(tmp_path: Path) -> None:
    nginx = FakeNginx()
    applier = ConfigApplier(conf_dir=tmp_path, nginx=nginx)
    _apply(applier, FILES)
    nginx.calls.clear()
    nginx.reload_error = "nginx: [emerg] bind() to 0.0.0.0:80 failed"
    result = _apply(applier, {**FILES, "upstreams.conf": "upstream b {}\n"}, "c2")
    assert not result.ok and result.rolled_back and result.stage == "reload"
    assert (tmp_path / "upstreams.conf").read_text() == FILES["upstreams.conf"]
    assert nginx.calls == ["test", "reload", "reload"]


def test_reload_that_does_not_take_effect_is_rolled_back(tmp_path: Path) -> None:
    nginx = FakeNginx()
    applier = ConfigApplier(conf_dir=tmp_path, nginx=nginx)
    _apply(applier, FILES)
    nginx.serves = False
    result = _apply(applier, {**FILES, "nginx.conf": "include upstreams.conf; # v2\n"}, "c2")
    assert not result.ok and result.rolled_back and result.stage == "verify"
    assert (tmp_path / "nginx.conf").read_text() == FILES["nginx.conf"]


def test_reload_that_does_not_take_effect_says_what_nginx_logged(tmp_path: Path) -> None:
    nginx = FakeNginx()
    applier = ConfigApplier(conf_dir=tmp_path, nginx=nginx)
    _apply(applier, FILES)
    nginx.serves = False
    nginx.log_errors = "bind() to 127.0.0.1:8080 failed (98: Address already in use)"
    result = _apply(applier, {**FILES, "nginx.conf": "include upstreams.conf; # v2\n"}, "c2")
    assert result.stage == "verify" and result.error is not None
    assert "Address already in use" in result.error
