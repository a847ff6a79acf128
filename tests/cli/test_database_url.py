"""`--database-url` / ORCHESTRIFY_DATABASE_URL: the store the controller opens (SQLite in
the data dir by default, or PostgreSQL), checked before anything listens; its password
is a secret like the tokens and shows nowhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bench.net import free_port
from bench.postgres import PASSWORD, PostgresServer
from orchestrify.cli import app
from orchestrify.controller.settings import ControllerSettings

runner = CliRunner()
SECRET = "s3cret-pw"


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[ControllerSettings]:
    """What `orchestrify controller` would serve with, instead of serving."""
    seen: list[ControllerSettings] = []
    monkeypatch.setattr("orchestrify.controller.app.serve_controller", seen.append)
    monkeypatch.delenv("ORCHESTRIFY_DATABASE_URL", raising=False)
    return seen


def controller(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    base = ["controller", "--data-dir", str(tmp_path / "data")]
    return runner.invoke(app, [*base, *args], env=env)


def test_the_default_store_is_sqlite_in_the_data_dir(
    tmp_path: Path, served: list[ControllerSettings]
) -> None:
    result = controller(tmp_path)
    assert result.exit_code == 0, result.output
    assert [s.database_url for s in served] == [None]
    assert (tmp_path / "data" / "orchestrify.db").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_postgresql_url_is_opened_migrated_and_kept_secret(
    tmp_path: Path, served: list[ControllerSettings], postgres: PostgresServer, how: str
) -> None:
    name = postgres.new_database(migrated=False)
    url = postgres.url(name)
    try:
        if how == "flag":
            result = controller(tmp_path, "--database-url", url)
        else:
            result = controller(tmp_path, env={"ORCHESTRIFY_DATABASE_URL": url})
        assert result.exit_code == 0, result.output
        (settings,) = served
        assert settings.database_url is not None
        assert settings.database_url.get_secret_value() == url
        assert PASSWORD not in repr(settings) and PASSWORD not in str(settings.model_dump())
        assert PASSWORD not in result.output
        with postgres.connect(name) as conn:  # the check before serving migrated it
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone()
    finally:
        postgres.drop_database(name)


def test_an_unreachable_database_is_one_line_exit_2_without_the_password(
    tmp_path: Path, served: list[ControllerSettings]
) -> None:
    url = f"postgresql+psycopg://orchestrify:{SECRET}@127.0.0.1:{free_port()}/orchestrify"
    result = controller(tmp_path, "--database-url", url)
    assert result.exit_code == 2
    assert result.output.startswith("error: cannot open the store at postgresql+psycopg://")
    assert result.output.count("\n") == 1, result.output
    assert SECRET not in result.output and "Traceback" not in result.output
    assert served == []
    assert not (tmp_path / "data" / "admin.token").exists()  # checked before anything


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        f"mysql://root:{SECRET}@127.0.0.1/orchestrify",
        f"postgresql+psycopg2://root:{SECRET}@127.0.0.1/orchestrify",
    ],
)
def test_a_url_of_no_store_is_one_line_exit_2(
    tmp_path: Path, served: list[ControllerSettings], url: str
) -> None:
    result = controller(tmp_path, "--database-url", url)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: cannot open the store")
    assert SECRET not in result.output and "Traceback" not in result.output
    assert served == []


@pytest.mark.parametrize("command", ["controller", "up"])
def test_help_never_shows_the_url_from_the_environment(command: str) -> None:
    url = f"postgresql+psycopg://orchestrify:{SECRET}@127.0.0.1:5432/orchestrify"
    result = runner.invoke(app, [command, "--help"], env={"ORCHESTRIFY_DATABASE_URL": url})
    assert result.exit_code == 0
    assert "--database-url" in result.output and "ORCHESTRIFY_DATABASE_URL" in result.output
    assert SECRET not in result.output
