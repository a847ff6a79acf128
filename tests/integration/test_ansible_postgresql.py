"""Role postgresql and the controller on it, on the shared control plane
(tests/integration/ansible_lab.py): site.yml installs Debian's PostgreSQL on the database
host, creates orchestrify's user and database, and the controller the roles set up on the
control host keeps its store there.

Checked from inside and outside: the cluster runs under systemd, listens only on the
address the controller connects to, lets only the controller host in (scram-sha-256; this
machine, with the right password, is refused), the controller's unit gets the database
URL through its root-only env file (not its command line, not Ansible's output), its log
says its store is PostgreSQL and its tables and rows are in that database. That the
second site.yml run changes nothing on the database host is test_ansible_tls.py's
second run.
"""

from __future__ import annotations

import pytest

from tests.integration.ansible_lab import DATABASE_PASSWORD, ControlPlane, wait_for
from tests.integration.provisioning import run_playbook

pytestmark = [pytest.mark.integration, pytest.mark.timeout(3600)]


def test_the_cluster_runs_under_systemd_and_listens_only_for_the_controllers(
    control_plane: ControlPlane,
) -> None:
    plane, ex, db = control_plane, control_plane.lab.exec, control_plane.db
    assert ex(db, "systemctl", "is-active", "postgresql@15-main") == "active"
    assert ex(db, "systemctl", "is-enabled", "postgresql@15-main") == "enabled"
    # TCP only on the address the controllers connect to: not every address, not loopback
    sockets = ex(db, "ss", "-Hltn", "sport", "=", ":5432").splitlines()
    # State Recv-Q Send-Q Local-Address:Port Peer-Address:Port
    listening = [line.split()[3] for line in sockets]
    assert listening == [f"{db.address}:5432"], sockets
    # pg_hba: the controller host, with a SCRAM password, and nothing else over TCP
    hba = [
        line.split()
        for line in ex(db, "cat", "/etc/postgresql/15/main/pg_hba.conf").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    tcp = [line for line in hba if line[0].startswith("host")]
    assert tcp == [["host", "orchestrify", "orchestrify", f"{plane.control.address}/32",
                    "scram-sha-256"]], hba  # fmt: skip
    # the password is stored as a SCRAM verifier, owned by orchestrify's user
    assert (
        plane.psql(
            "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'orchestrify'"
        )
        == "t"
    )
    assert (
        plane.psql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'orchestrify'")
        == "orchestrify"
    )


def test_another_host_is_refused_even_with_the_password(control_plane: ControlPlane) -> None:
    import psycopg

    # This machine reaches the database host (docker0), but is no controller host.
    with pytest.raises(psycopg.OperationalError, match=r"pg_hba\.conf"):
        psycopg.connect(
            host=control_plane.db.address, port=5432, dbname="orchestrify", user="orchestrify",
            password=DATABASE_PASSWORD, connect_timeout=10,
        ).close()  # fmt: skip


def test_the_controller_keeps_its_store_in_postgresql(control_plane: ControlPlane) -> None:
    plane, ex, control = control_plane, control_plane.lab.exec, control_plane.control
    # The URL reaches the controller through its root-only env file, never its command line
    env_file = ex(control, "cat", "/etc/orchestrify/controller.env")
    assert ex(control, "stat", "-c", "%a %U", "/etc/orchestrify/controller.env") == "600 root"
    (url_line,) = [line for line in env_file.splitlines() if "DATABASE_URL" in line]
    assert url_line.startswith(
        f"ORCHESTRIFY_DATABASE_URL=postgresql+psycopg://orchestrify:lab-db-pass%27w%2F%40rd@"
        f"{plane.db.address}:5432/orchestrify"
    ), url_line
    start = ex(control, "systemctl", "show", "-p", "ExecStart", "orchestrify-controller")
    assert "postgresql" not in start and DATABASE_PASSWORD not in start, start
    assert "%27w%2F%40rd" not in ex(control, "ps", "-eo", "args")
    # no_log: the playbook's output never shows the password, raw or in the URL
    assert DATABASE_PASSWORD not in plane.first.output
    assert "lab-db-pass%27w" not in plane.first.output

    # The controller says so, and its tables and rows are in the database.
    def store_opened() -> str | None:
        journal = ex(control, "journalctl", "--no-pager", "-o", "cat",
                     "-u", "orchestrify-controller")  # fmt: skip
        lines = [line for line in journal.splitlines() if "store opened" in line]
        return lines[-1] if lines else None

    line = wait_for("the controller's 'store opened' line", store_opened, timeout=60)
    assert "postgresql" in line and plane.db.address in line, line
    assert DATABASE_PASSWORD not in line and "%27w" not in line, line
    tables = plane.psql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").split()
    assert {"alembic_version", "nodes", "services", "replicas", "events"} <= set(tables), tables
    assert plane.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'nodes'") == "orchestrify"

    # what the API shows is what the database holds: the worker registered through the
    # controller is a row there
    def worker_row() -> str | None:
        return plane.psql("SELECT name FROM nodes") or None

    assert wait_for("the worker's row", worker_row, timeout=120) == plane.worker.name
    assert [n["name"] for n in plane.call("GET", "/v1/nodes")] == [plane.worker.name]


def test_the_role_refuses_to_run_without_a_password(control_plane: ControlPlane) -> None:
    run = run_playbook(
        "control.yml", inventory=control_plane.inventory, extra_vars=control_plane.extra_vars,
        args=("--tags", "postgresql", "--limit", control_plane.db.name,
              "-e", '{"postgresql_orchestrify_password": ""}'),
    )  # fmt: skip
    assert run.rc != 0
    assert "Set postgresql_orchestrify_password" in run.output, run.output[-3000:]
    # and nothing changed: the controller still reaches its store with the old one
    assert control_plane.call("GET", "/v1/nodes")
