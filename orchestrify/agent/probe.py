"""HTTP health probes of replicas (httpx, async); answers are values, never exceptions."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import httpx


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    duration_s: float
    detail: str


class Prober(Protocol):
    async def probe(self, url: str) -> ProbeResult: ...


class HttpProber:
    """GET the health URL; healthy means a 2xx answer within the timeout."""

    def __init__(self, *, timeout_s: float) -> None:
        # No keep-alive: each probe is a fresh connection, as a client would make.
        self._http = httpx.AsyncClient(
            timeout=timeout_s,
            limits=httpx.Limits(max_keepalive_connections=0),
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def probe(self, url: str) -> ProbeResult:
        start = time.perf_counter()
        try:
            resp = await self._http.get(url)
        except httpx.HTTPError as exc:
            detail = f"{type(exc).__name__}: {exc}".rstrip(": ")
            return ProbeResult(False, time.perf_counter() - start, detail)
        elapsed = time.perf_counter() - start
        if resp.is_success:
            return ProbeResult(True, elapsed, f"HTTP {resp.status_code}")
        return ProbeResult(False, elapsed, f"HTTP {resp.status_code}")
