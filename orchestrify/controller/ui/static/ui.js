// orchestrify status page: keeps each page's live parts current without reloading it.
//
// A page's element with data-live (the fleet table, the services table, a service's
// page, the jobs table, a job's page) names its long-poll URL (the fleet's:
// /ui/fleet/live) and data-version the versions it is as of. The controller answers the
// live parts again (rendered on the server, escaped there) once something changed, or
// after a few seconds; each part received replaces the page's element of the same id,
// or, when it has data-append (a job's new output), is added to the end of it. An
// answer with the X-Orchestrify-Live-End header is final (a finished job): the poll
// stops. On an error it tries again after RETRY_MS; when the sign-in has ended it goes
// to the sign-in page.
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
  const END_HEADER = "X-Orchestrify-Live-End";
  const live = document.querySelector("[data-live]");
  if (!live) {
    return;
  }
  const status = document.getElementById("live-status");
  const updated = document.getElementById("live-updated");
  const url = live.getAttribute("data-live");
  let version = live.getAttribute("data-version") || "";
  let connected = null;

  // The status line is a live region: it changes only when the connection does, so a
  // screen reader is not told of every refresh.
  function say(ok, text) {
    if (connected !== ok) {
      connected = ok;
      status.textContent = text;
    }
  }

  // Add an appended part's children to the end of the page's element: it stays
  // scrolled to its end if it was there, and keeps only its last data-keep children
  // (its "-cut" note shown once some were dropped).
  function append(current, part) {
    const atEnd = current.scrollHeight - current.scrollTop - current.clientHeight < 32;
    current.append(...Array.from(part.childNodes));
    const keep = parseInt(current.getAttribute("data-keep") || "0", 10);
    if (keep > 0 && current.children.length > keep) {
      while (current.children.length > keep) {
        current.firstElementChild.remove();
      }
      const note = document.getElementById(current.id + "-cut");
      if (note) {
        note.hidden = false;
      }
    }
    if (atEnd) {
      current.scrollTop = current.scrollHeight;
    }
  }

  // Replace each part received (an element with an id: a table body, a list of
  // figures) by the page's element of that id, keeping the keyboard focus on the same
  // element (buttons and links have stable ids) so a refresh never loses one's place.
  function swap(html) {
    const template = document.createElement("template");
    template.innerHTML = html.trim();
    const parts = Array.from(template.content.children).filter((part) => part.id);
    if (parts.length === 0) {
      throw new Error("no part to replace in the answer");
    }
    const active = document.activeElement;
    let focusId = "";
    for (const part of parts) {
      const current = document.getElementById(part.id);
      if (!current || !live.contains(current)) {
        throw new Error("no element " + part.id + " on the page");
      }
      if (active && active.id && current.contains(active)) {
        focusId = active.id;
      }
      if (part.hasAttribute("data-append")) {
        append(current, part);
      } else {
        current.replaceWith(part);
      }
    }
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
      window.location.assign("/ui/login?next=" + encodeURIComponent(window.location.pathname));
      return false;
    }
    if (resp.status === 404) {
      say(false, "What this page shows no longer exists (it was deleted): it updates no more.");
      return false;
    }
    if (!resp.ok) {
      throw new Error("HTTP " + resp.status);
    }
    const html = await resp.text();
    swap(html);
    version = resp.headers.get(VERSION_HEADER) || "";
    updated.textContent = "Updated at " + new Date().toLocaleTimeString() + ".";
    if (resp.headers.get(END_HEADER)) {
      connected = false;
      status.textContent = live.getAttribute("data-final") || "What this page shows is final.";
      return false;
    }
    say(true, "Live: the page updates by itself.");
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
