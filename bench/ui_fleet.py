"""Benchmark: how long the status page's fleet page takes to answer, and to show in a
real browser.

Issue 13's goal: the fleet page of 200 nodes and 1,000 replicas renders in under 1 s.
A store is seeded with ``--nodes`` nodes (each with a heartbeat's figures) and
``--replicas`` replicas spread over them in services of 100. Then:

- by default the real controller app answers, in this process (Starlette's test client,
  no socket): a sign-in, then ``GET /ui/`` (the whole page) and ``GET /ui/fleet/live``
  with an old version (the table's body the page swaps in when something changed)
  ``--rounds`` times each. It prints the median and the slowest answer, and the page's
  size. What a browser adds (parsing and laying out the table) is not in it;
- with ``--browser`` the controller serves on a free loopback port (uvicorn, no
  reconciler: nothing but the bench moves the fleet) and Debian's Chromium, driven by
  Playwright (the test extras; no browser download), signs in, then loads ``/ui/``
  ``--rounds`` times, each until the table's last row is in the DOM and the ``load``
  event has fired: the Navigation Timing figures (response end, DOMContentLoaded,
  load), the first frame drawn after ``load`` (the table laid out and painted), and the
  wall clock. Then, on one loaded page, ``--rounds`` live updates: a node drained (or
  activated again) through the API, timed until the page shows its new state without a
  reload (the goal, as the issue's "within 2 s" for the live page).

    PYTHONPATH=. .venv/bin/python bench/ui_fleet.py [--nodes 200] [--replicas 1000]
        [--rounds 20] [--quick] [--browser]

Bounded: a temporary data dir, removed at the end; no network but loopback, no Docker;
the controller and the browser are stopped at the end.
"""

from __future__ import annotations

import argparse
import re
import secrets
import shutil
import statistics
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.agent_harness import start_controller
from bench.net import free_port
from bench.report import Report, at_most
from orchestrify.controller.app import create_app
from orchestrify.controller.settings import ControllerSettings
from orchestrify.models import Heartbeat, NodeRegistration, ServiceSpec
from orchestrify.store import Store

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

PER_SERVICE = 100
TOKEN = "ui-bench-admin-token"


def seed(data_dir: Path, *, nodes: int, replicas: int) -> list[str]:
    """The store seeded; its nodes' ids, in the order of their names."""
    store = Store.in_data_dir(data_dir)
    try:
        node_ids = [
            store.register_node(
                NodeRegistration(
                    name=f"worker-{i:04d}",
                    address=f"10.0.{i // 250}.{i % 250 + 1}",
                    node_id=secrets.token_hex(6),
                    node_token=secrets.token_urlsafe(32),
                )
            )[0].id
            for i in range(nodes)
        ]
        at = datetime.now(UTC)
        store.record_heartbeats(
            {
                node_id: (
                    Heartbeat(
                        cpu_percent=float(i % 100),
                        memory_total=16 * 2**30,
                        memory_free=(i % 16) * 2**30,
                        disk_free=(i % 90 + 10) * 2**30,
                        replica_count=replicas // max(1, nodes),
                    ),
                    at,
                )
                for i, node_id in enumerate(node_ids)
            }
        )
        left, k = replicas, 0
        while left > 0:
            count = min(PER_SERVICE, left)
            name = f"svc-{k:03d}"
            store.create_service(
                ServiceSpec(name=name, image="demo:1", replicas=count, max_replicas=count)
            )
            start = k * PER_SERVICE
            store.create_replicas(
                name,
                [node_ids[(start + j) % len(node_ids)] for j in range(count)],
                reason="bench",
            )
            left -= count
            k += 1
    finally:
        store.close()
    return node_ids


def sign_in(client: TestClient) -> None:
    page = client.get("/ui/login")
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None, "no CSRF field on the sign-in page"
    resp = client.post(
        "/ui/login", data={"token": TOKEN, "csrf": found.group(1)}, follow_redirects=False
    )
    if resp.status_code != 303:
        raise RuntimeError(f"sign-in refused: {resp.status_code} {resp.text[:200]}")


def timed(client: TestClient, path: str, rounds: int) -> tuple[list[float], int]:
    samples, size = [], 0
    for _ in range(rounds):
        started = time.perf_counter()
        resp = client.get(path)
        samples.append(time.perf_counter() - started)
        if resp.status_code != 200:
            raise RuntimeError(f"{path}: {resp.status_code} {resp.text[:200]}")
        size = len(resp.content)
    return samples, size


def run(*, nodes: int, replicas: int, rounds: int) -> Report:
    data_dir = Path(tempfile.mkdtemp(prefix="orchestrify-ui-bench-"))
    try:
        seed(data_dir, nodes=nodes, replicas=replicas)
        settings = ControllerSettings(data_dir=data_dir, token=TOKEN, join_token="j" * 24)
        app = create_app(settings, run_reconciler=False)
        with warnings.catch_warnings():
            # Starlette's in-process client is the one wanted here; its nudge towards
            # another HTTP library is not this bench's output.
            warnings.filterwarnings("ignore", message="Using `httpx` with")
            from fastapi.testclient import TestClient
        with TestClient(app) as client:
            sign_in(client)
            timed(client, "/ui/", 2)  # warm: the views are read once per store version
            page, page_size = timed(client, "/ui/", rounds)
            body, body_size = timed(client, "/ui/fleet/live?v=0-0-0", rounds)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    out = Report("status page: the fleet page, answered by the controller")
    scenario = f"{nodes:,} nodes, {replicas:,} replicas"
    out.add(scenario, "GET /ui/ median", statistics.median(page) * 1000, "ms")
    out.add(scenario, "GET /ui/ slowest", max(page) * 1000, "ms", at_most(1000, "ms"))
    out.add(scenario, "  page size", page_size / 1024, "KiB")
    out.add(scenario, "live table body median", statistics.median(body) * 1000, "ms")
    out.add(scenario, "live table body slowest", max(body) * 1000, "ms", at_most(1000, "ms"))
    out.add(scenario, "  body size", body_size / 1024, "KiB")
    return out


# --- in a real browser ------------------------------------------------------------------
CHROMIUM = "/usr/bin/chromium"  # Debian's: Playwright drives it, nothing is downloaded
BROWSER_TIMEOUT_MS = 30_000  # a guard against a hang, not a goal
LIVE_GOAL_MS = 2000  # issue 13: a change shows on the live page "within 2 s"
# Once the page's live poll has been answered, it sends the next one at once: this
# pause lets it reach the controller, so each change meets a waiting poll, as a
# viewer's page has (loopback takes well under 1 ms; a busy machine's threads more).
POLL_SETTLE_S = 0.3
# Injected before the page's own scripts (by Playwright, so the page's CSP does not
# apply): the time of the first frame drawn after ``load``: rAF runs just before a
# frame's style, layout and paint, and a task queued from it runs after that frame.
FRAME_AFTER_LOAD = """
window.addEventListener("load", () => {
  requestAnimationFrame(() => setTimeout(() => {
    window.__frameAfterLoad = performance.now();
  }, 0));
});
"""
# True once the table has every node's row and the page's load is done and drawn.
PAGE_SHOWN = """
(count) => {
  const nav = performance.getEntriesByType("navigation")[0];
  return document.querySelectorAll("#fleet-body > tr.node").length === count
    && nav !== undefined && nav.loadEventEnd > 0
    && window.__frameAfterLoad !== undefined;
}
"""
NAVIGATION = """
() => {
  const nav = performance.getEntriesByType("navigation")[0];
  return {
    responseEnd: nav.responseEnd,
    domContentLoaded: nav.domContentLoadedEventEnd,
    load: nav.loadEventEnd,
    frame: window.__frameAfterLoad,
  };
}
"""
# The state word in the row of the node named ``name`` (null: no such row).
_STATE_WORD = """
  let word = null;
  for (const row of document.querySelectorAll("#fleet-body > tr.node")) {
    if (row.querySelector(".node-name").textContent === name) {
      word = row.querySelector(".state-word").textContent;
    }
  }
"""
STATE_WORD = "(name) => {" + _STATE_WORD + "  return word;\n}"
# Polled once a frame: the browser's clock (ms since the epoch) once that word reads
# ``want``, i.e. in the frame that first shows it.
STATE_SHOWN = "([name, want]) => {" + _STATE_WORD + "  return word === want && Date.now();\n}"


def browser_sign_in(page: Any) -> None:
    page.goto("/ui/login")
    page.fill("#token", TOKEN)
    page.click("form.login button[type=submit]")
    page.wait_for_url("**/ui/")


def load_fleet(page: Any, nodes: int) -> tuple[float, dict[str, float]]:
    """One load of ``/ui/`` until every row is in the DOM and ``load`` was drawn: the
    wall clock (s) and the page's own timings (ms from the navigation's start)."""
    started = time.perf_counter()
    page.goto("/ui/", wait_until="load")
    page.wait_for_function(PAGE_SHOWN, arg=nodes)
    wall = time.perf_counter() - started
    timings: dict[str, float] = page.evaluate(NAVIGATION)
    return wall, timings


def live_updates(page: Any, api: Any, *, node_id: str, name: str, rounds: int) -> list[float]:
    """``rounds`` changes of one node (drained, activated, drained...) through the API,
    each timed (ms) from just before the request until the page shows it; the page is
    never reloaded (checked: a mark set on it first is still there at the end)."""
    page.evaluate("() => { window.__benchMark = 'not reloaded'; }")
    shown: list[float] = []
    before = page.evaluate(STATE_WORD, name)
    if before is None or before == "draining":
        raise RuntimeError(f"no row of node {name}, or it is draining already: {before}")
    for i in range(rounds):
        draining = i % 2 == 0
        time.sleep(POLL_SETTLE_S)
        started_ms = time.time() * 1000  # the epoch clock the browser's Date.now() reads
        api.request("POST", f"/v1/nodes/{node_id}/{'drain' if draining else 'activate'}")
        want = "draining" if draining else before
        seen = page.wait_for_function(STATE_SHOWN, arg=[name, want]).json_value()
        shown.append(float(seen) - started_ms)
    if page.evaluate("() => window.__benchMark") != "not reloaded":
        raise RuntimeError("the page was reloaded during the live updates")
    return shown


def run_browser(*, nodes: int, replicas: int, rounds: int) -> Report:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise SystemExit(
            "--browser needs Playwright for Python (pip install -e '.[test]')"
        ) from exc
    if not Path(CHROMIUM).exists():
        raise SystemExit(
            f"--browser needs Debian's Chromium at {CHROMIUM} (apt-get install chromium)"
        )
    data_dir = Path(tempfile.mkdtemp(prefix="orchestrify-ui-bench-"))
    try:
        node_ids = seed(data_dir / "controller", nodes=nodes, replicas=replicas)
        controller = start_controller(
            data_dir / "controller",
            free_port(),
            admin_token=TOKEN,
            join_token="j" * 24,
            run_reconciler=False,
        )
        api = controller.client()
        try:
            with sync_playwright() as p:
                # The system's browser, no sandbox: the bench may run as root.
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                try:
                    context = browser.new_context(
                        base_url=controller.url, viewport={"width": 1366, "height": 768}
                    )
                    context.add_init_script(FRAME_AFTER_LOAD)
                    page = context.new_page()
                    page.set_default_timeout(BROWSER_TIMEOUT_MS)
                    browser_sign_in(page)
                    for _ in range(2):  # warm: the views, the browser's caches
                        load_fleet(page, nodes)
                    loads = [load_fleet(page, nodes) for _ in range(rounds)]
                    middle = len(node_ids) // 2
                    live = live_updates(
                        page,
                        api,
                        node_id=node_ids[middle],
                        name=f"worker-{middle:04d}",
                        rounds=rounds,
                    )
                    context.close()
                finally:
                    browser.close()
        finally:
            api.close()
            controller.stop()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    out = Report("status page: the fleet page in Chromium (real controller on loopback)")
    scenario = f"{nodes:,} nodes, {replicas:,} replicas"

    def ms(key: str) -> list[float]:
        return [timings[key] for _, timings in loads]

    wall = [w * 1000 for w, _ in loads]
    out.add(scenario, "page loaded (loadEventEnd) median", statistics.median(ms("load")), "ms")
    out.add(
        scenario, "page loaded (loadEventEnd) slowest", max(ms("load")), "ms", at_most(1000, "ms")
    )
    out.add(scenario, "  response end median", statistics.median(ms("responseEnd")), "ms")
    out.add(scenario, "  DOMContentLoaded median", statistics.median(ms("domContentLoaded")), "ms")
    out.add(scenario, "  first frame after load median", statistics.median(ms("frame")), "ms")
    out.add(scenario, "  first frame after load slowest", max(ms("frame")), "ms")
    out.add(scenario, "last row and load, wall clock median", statistics.median(wall), "ms")
    out.add(scenario, "last row and load, wall clock slowest", max(wall), "ms", at_most(1000, "ms"))
    out.add(scenario, "live update shown median", statistics.median(live), "ms")
    out.add(scenario, "live update shown slowest", max(live), "ms", at_most(LIVE_GOAL_MS, "ms"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--replicas", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="20 nodes, 100 replicas, 3 rounds (1 with --browser)",
    )
    parser.add_argument(
        "--browser",
        action="store_true",
        help="measure in Debian's Chromium (Playwright) against the controller on loopback",
    )
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.replicas, args.rounds = 20, 100, 1 if args.browser else 3
    measure = run_browser if args.browser else run
    measure(nodes=args.nodes, replicas=args.replicas, rounds=args.rounds).print()


if __name__ == "__main__":
    main()
