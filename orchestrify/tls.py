"""TLS for orchestrify's HTTP: the server's certificate pair, the client's trust, and the
translation of a refused certificate into an orchestrify error.

Servers (the controller's API, the edge's /metrics) check their certificate and key at
start, so a wrong file is a one-line error before anything listens. Clients (CLI, agent,
edge) verify the controller against a private CA (``--ca``) or, without one, against the
system's trust store.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import httpx

from orchestrify.errors import CertificateRejected

__all__ = [
    "certificate_rejected",
    "check_ca_file",
    "check_server_pair",
    "client_verify",
]


def _readable(path: Path, option: str) -> None:
    if not path.is_file():
        raise ValueError(f"{option} {path}: no such file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{option} {path}: not readable by this user")


def check_server_pair(*, cert: Path | None, key: Path | None) -> None:
    """Raise ValueError (one line, naming the file) unless both or neither are given and
    the key belongs to the certificate: a server must not start half-configured."""
    if cert is None and key is None:
        return
    if cert is None or key is None:
        raise ValueError("give both --tls-cert and --tls-key, or neither")
    _readable(cert, "--tls-cert")
    _readable(key, "--tls-key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except ssl.SSLError as exc:
        why = "the key does not match the certificate" if "KEY_VALUES_MISMATCH" in str(exc) else ""
        raise ValueError(
            f"--tls-cert {cert} with --tls-key {key}: "
            f"{why or 'not a PEM certificate and its unencrypted PEM key'} ({exc.reason})"
        ) from None
    except OSError as exc:  # a passphrase prompt that got nothing, or a read error
        raise ValueError(f"--tls-cert {cert} with --tls-key {key}: {exc}") from None


def check_ca_file(ca: Path) -> None:
    """Raise ValueError unless ``ca`` is a readable file of PEM CA certificates."""
    _readable(ca, "--ca")
    try:
        ssl.create_default_context(cafile=str(ca))
    except ssl.SSLError as exc:
        raise ValueError(f"--ca {ca}: no PEM certificate in it ({exc.reason})") from None


def client_verify(ca: Path | None) -> ssl.SSLContext | bool:
    """What httpx verifies the controller's certificate with: the CA in ``ca`` only, or
    (None) the system's trust store. Plain http URLs ignore it."""
    if ca is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        # CertificateRejected is retried like an unreachable controller (the agent keeps
        # its containers); the CLI shows it as one line.
        raise CertificateRejected(
            f"cannot load the CA file {ca} ({exc}); pass --ca (or ORCHESTRIFY_CA) a "
            "readable PEM file of the CA that signed the controller's certificate"
        ) from exc


def certificate_rejected(
    exc: httpx.HTTPError, *, url: str, ca: Path | None
) -> CertificateRejected | None:
    """The orchestrify error for an httpx error caused by a refused certificate, or None
    when the cause is something else (refused connection, timeout...)."""
    cause: BaseException | None = exc
    seen = 0
    while cause is not None and seen < 10:
        if isinstance(cause, ssl.SSLCertVerificationError):
            reason = cause.verify_message or str(cause)
            if ca is not None:
                return CertificateRejected(
                    f"the controller's certificate is not signed by the CA in {ca}: {reason} "
                    f"(controller {url}); pass --ca (or ORCHESTRIFY_CA) the CA file that "
                    "signed the controller's certificate, or check that the controller URL "
                    "names a host the certificate is for"
                )
            return CertificateRejected(
                f"the controller's certificate is not trusted by this system's CA store: "
                f"{reason} (controller {url}); pass --ca FILE (or ORCHESTRIFY_CA) with the "
                "CA that signed it"
            )
        if isinstance(cause, ssl.SSLError):
            return CertificateRejected(
                f"TLS with the controller at {url} failed: {cause.reason or cause}; check "
                "that the URL's scheme (https) and port match the controller's"
            )
        cause = cause.__cause__ or cause.__context__
        seen += 1
    return None
