"""TLS settings are checked at start: both files or neither, files that exist, a key that
belongs to the certificate, a CA file with a certificate in it; the CLI says what is
wrong in one line and exits 2 before anything listens."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from orchestrify.cli import app as cli_app
from orchestrify.controller.settings import ControllerSettings
from orchestrify.edge import EdgeSettings
from orchestrify.errors import CertificateRejected
from orchestrify.tls import certificate_rejected, check_ca_file, check_server_pair
from tests.tls import ServerPair, make_ca, make_server_pair


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Path, ServerPair, ServerPair]:
    ca = make_ca(tmp_path, name="ca")
    return (
        ca.cert_file,
        make_server_pair(ca, tmp_path, name="a"),
        make_server_pair(ca, tmp_path, name="b"),
    )


def test_a_matching_pair_is_accepted_and_turns_tls_on(
    tmp_path: Path, pki: tuple[Path, ServerPair, ServerPair]
) -> None:
    _, a, _ = pki
    settings = ControllerSettings(data_dir=tmp_path, tls_cert=a.cert_file, tls_key=a.key_file)
    assert settings.tls
    assert not ControllerSettings(data_dir=tmp_path).tls


@pytest.mark.parametrize(
    ("which", "expected"),
    [
        ("cert-only", "give both --tls-cert and --tls-key"),
        ("missing-cert", "no such file"),
        ("wrong-key", "the key does not match the certificate"),
        ("not-pem", "--tls-cert"),
    ],
)
def test_a_bad_pair_is_refused_with_one_clear_message(
    tmp_path: Path, pki: tuple[Path, ServerPair, ServerPair], which: str, expected: str
) -> None:
    _, a, b = pki
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cert, key = {
        "cert-only": (a.cert_file, None),
        "missing-cert": (tmp_path / "nope.crt", a.key_file),
        "wrong-key": (a.cert_file, b.key_file),
        "not-pem": (garbage, a.key_file),
    }[which]
    with pytest.raises(ValueError, match=expected):
        check_server_pair(cert=cert, key=key)
    with pytest.raises(ValidationError, match=expected):
        ControllerSettings(data_dir=tmp_path, tls_cert=cert, tls_key=key)
    with pytest.raises(ValidationError, match=expected):
        EdgeSettings(
            controller_url="http://127.0.0.1:1",
            token=None,
            nginx_conf_dir=tmp_path,
            tls_cert=cert,
            tls_key=key,
        )


def test_a_ca_file_must_hold_a_certificate(
    tmp_path: Path, pki: tuple[Path, ServerPair, ServerPair]
) -> None:
    ca, _, _ = pki
    check_ca_file(ca)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ValueError, match="no PEM certificate"):
        check_ca_file(garbage)
    with pytest.raises(ValueError, match="no such file"):
        check_ca_file(tmp_path / "nope.pem")


def test_the_controller_command_refuses_a_wrong_key_in_one_line_with_exit_2(
    tmp_path: Path, pki: tuple[Path, ServerPair, ServerPair]
) -> None:
    _, a, b = pki
    args = ["controller", "--data-dir", str(tmp_path / "data"), "--port", "1"]
    result = CliRunner().invoke(
        cli_app, [*args, "--tls-cert", str(a.cert_file), "--tls-key", str(b.key_file)]
    )
    assert result.exit_code == 2, result.output
    assert "the key does not match the certificate" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "data").exists()  # refused before anything was made

    # The same through the environment.
    result = CliRunner().invoke(
        cli_app,
        args,
        env={"ORCHESTRIFY_TLS_CERT": str(tmp_path / "nope.crt"), "ORCHESTRIFY_TLS_KEY": "k"},
    )
    assert result.exit_code == 2, result.output
    assert "--tls-cert" in result.output and "no such file" in result.output


def test_the_cli_refuses_a_missing_ca_file_with_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli_app, ["--ca", str(tmp_path / "nope.pem"), "node", "ls"], env={"ORCHESTRIFY_CA": None}
    )
    assert result.exit_code == 2, result.output
    assert "--ca" in result.output and "no such file" in result.output


def test_only_certificate_failures_become_certificate_rejected() -> None:
    refused = httpx.ConnectError("connection refused")
    assert certificate_rejected(refused, url="https://x", ca=None) is None
    cause = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cause.verify_message = "unable to get local issuer certificate"
    wrapped = httpx.ConnectError("tls")
    wrapped.__cause__ = cause
    err = certificate_rejected(wrapped, url="https://x", ca=Path("/etc/ca.pem"))
    assert isinstance(err, CertificateRejected)
    assert "not signed by the CA in /etc/ca.pem" in str(err)
    assert "unable to get local issuer certificate" in str(err)


def test_the_agent_command_refuses_a_missing_ca_file_with_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli_app,
        [
            "agent",
            "--controller",
            "https://127.0.0.1:1",
            "--join-token",
            "j",
            "--state-dir",
            str(tmp_path / "agent"),
            "--ca",
            str(tmp_path / "nope.pem"),
        ],
        env={"ORCHESTRIFY_CA": None},
    )
    assert result.exit_code == 2, result.output
    assert "--ca" in result.output and "no such file" in result.output
    assert not (tmp_path / "agent").exists()  # refused before the agent started
