// orchestrify status page: keeps the fleet table current without reloading the page.
//
// Long-polls /ui/fleet/live with the versions the table is as of; the controller answers
// the table's new body (rendered on the server, escaped there) once something changed,
// or after a few seconds so the heartbeat ages move. On an error it tries again after
// RETRY_MS; when the sign-in has ended it goes to the sign-in page.
"use strict";

// Every action's form asks first: a form with data-confirm is sent only once the
// browser's confirmation dialog is accepted (listened on the document, so the rows the
// live poll swaps in ask too).
document.addEventListener("submit", function (event) {
  const form = event.target;
  const question = form instanceof HTMLFormElement ? form.getAttribute("data-confirm") : null;
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

(function () {
  const RETRY_MS = 2000;
  const VERSION_HEADER = "X-Orchestrify-Fleet-Version";
  const table = document.getElementById("fleet");
  if (!table) {
    return;
  }
  const status = document.getElementById("live-status");
  const updated = document.getElementById("live-updated");
  const url = table.getAttribute("data-live") || "/ui/fleet/live";
  let version = table.getAttribute("data-version") || "";
  let connected = null;

  // The status line is a live region: it changes only when the connection does, so a
  // screen reader is not told of every refresh.
  function say(ok, text) {
    if (connected !== ok) {
      connected = ok;
      status.textContent = text;
    }
  }

  // Replace the table's body by the one received, keeping the keyboard focus on the
  // same button (buttons have stable ids) so a refresh never loses one's place.
  function swap(html) {
    const template = document.createElement("template");
    template.innerHTML = html.trim();
    const fresh = template.content.querySelector("tbody");
    const current = document.getElementById("fleet-body");
    if (!fresh || !current) {
      throw new Error("no table body in the answer");
    }
    const active = document.activeElement;
    const focusId = active && current.contains(active) ? active.id : "";
    current.replaceWith(fresh);
    if (focusId) {
      const again = document.getElementById(focusId);
      if (again) {
        again.focus();
      }
    }
  }

  async function poll() {
    const resp = await fetch(url + "?v=" + encodeURIComponent(version), {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "text/html" },
    });
    if (resp.status === 401) {
      window.location.assign("/ui/login?next=" + encodeURIComponent("/ui/"));
      return false;
    }
    if (!resp.ok) {
      throw new Error("HTTP " + resp.status);
    }
    const html = await resp.text();
    swap(html);
    version = resp.headers.get(VERSION_HEADER) || "";
    say(true, "Live: the table updates by itself.");
    updated.textContent = "Updated at " + new Date().toLocaleTimeString() + ".";
    return true;
  }

  async function run() {
    for (;;) {
      try {
        if (!(await poll())) {
          return;
        }
      } catch (err) {
        say(false, "Not connected to the controller: trying again every 2 s.");
        await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
      }
    }
  }

  run();
})();
