// ramboot dashboard: live updates and confirmations. Pages are complete without
// this script; it only keeps them current and asks before an action runs.
"use strict";
(function () {
  const live = document.body.dataset.live;

  // --- Confirmation: a form marked data-confirm asks in a <dialog> first. Without
  // this script the server shows a confirmation page instead.
  const dialog = document.getElementById("confirm-dialog");
  document.addEventListener("submit", (ev) => {
    const form = ev.target;
    if (!(form instanceof HTMLFormElement) || !form.dataset.confirm || !dialog) return;
    const confirmed = form.querySelector("input[name=confirmed]");
    if (confirmed && confirmed.value === "1") return;
    ev.preventDefault();
    const submitter = ev.submitter;
    const action = (submitter && submitter.name === "action") ? submitter.value : (form.elements.action && form.elements.action.value);
    const selected = form.id ? document.querySelectorAll(`input[name=node][form="${form.id}"]:checked`).length : 0;
    const nodes = form.querySelectorAll("input[type=hidden][name=node]").length + selected;
    const aboutNodes = form.id === "bulk" || form.querySelector("input[name=node]");
    const what = (submitter && submitter.dataset.label) || form.dataset.confirm;
    if (!aboutNodes) {
      document.getElementById("confirm-text").textContent = `${what}. Go ahead?`;
      dialog.querySelector("button[value=ok]").hidden = false;
    } else if (nodes === 0) {
      document.getElementById("confirm-text").textContent = "Select at least one node first.";
      dialog.querySelector("button[value=ok]").hidden = true;
    } else {
      document.getElementById("confirm-text").textContent =
        `${what}: ${nodes} node${nodes === 1 ? "" : "s"}. Go ahead?`;
      dialog.querySelector("button[value=ok]").hidden = false;
    }
    dialog.returnValue = "";
    dialog.showModal();
    dialog.addEventListener("close", function once() {
      dialog.removeEventListener("close", once);
      if (dialog.returnValue !== "ok") return;
      if (confirmed) confirmed.value = "1";
      if (submitter && submitter.name) {
        const carry = document.createElement("input");
        carry.type = "hidden"; carry.name = submitter.name; carry.value = submitter.value;
        form.appendChild(carry);
      }
      form.submit();
    });
  });

  // --- Select all rows.
  const all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", () => {
      document.querySelectorAll("input.row-select").forEach((box) => { box.checked = all.checked; });
    });
  }

  // --- Live updates: the server's event stream says what changed; the page asks
  // the server for itself again and swaps in the parts marked data-live, so rows
  // are rendered by the same templates as on a reload.
  if (!live || !window.EventSource) return;
  const status = document.getElementById("live-status");
  const onPage = () => new Set(Array.from(document.querySelectorAll("[data-node-id]"), (el) => el.dataset.nodeId));
  let pending = null;
  let outside = 0;

  function refresh() {
    pending = null;
    fetch(location.href, { credentials: "same-origin", headers: { "X-Live": "1" } })
      .then((r) => (r.ok ? r.text() : Promise.reject(new Error(`HTTP ${r.status}`))))
      .then((html) => {
        const fresh = new DOMParser().parseFromString(html, "text/html");
        fresh.querySelectorAll("[data-live]").forEach((el) => {
          const old = document.querySelector(`[data-live="${CSS.escape(el.dataset.live)}"]`);
          if (!old || old.outerHTML === el.outerHTML) return;
          if (old.contains(document.activeElement) && old !== document.body) return;
          old.querySelectorAll("input[type=checkbox]").forEach((box) => {
            const twin = box.id && el.querySelector(`#${CSS.escape(box.id)}`);
            if (twin) twin.checked = box.checked;
          });
          if (el.tagName === "TR") el.classList.add("changed");
          old.replaceWith(el);
        });
      })
      .catch((e) => { if (status) status.textContent = `Live updates paused: ${e.message}`; });
  }

  function schedule() {
    if (!pending) pending = setTimeout(refresh, 750);
  }

  const source = new EventSource("/ui/events");
  source.addEventListener("open", () => { if (status) status.textContent = "Live"; });
  source.addEventListener("error", () => { if (status) status.textContent = "Reconnecting…"; });
  // Newer tabs of this session took the live updates over: stay quiet until reloaded.
  source.addEventListener("closed", () => {
    source.close();
    if (status) status.textContent = "Paused (newer tabs are live); reload to resume";
  });
  source.addEventListener("event", (msg) => {
    let event;
    try { event = JSON.parse(msg.data); } catch (_) { return; }
    const feed = document.getElementById("feed");
    if (feed) {
      const item = document.createElement("li");
      const time = document.createElement("time");
      time.textContent = new Date(event.at_ms).toLocaleTimeString();
      const link = document.createElement("a");
      link.href = `/ui/nodes/${event.node_id}`;
      link.textContent = `node ${event.node_id}`;
      item.append(time, link, ` ${event.state ? "→ " + event.state + ": " : ""}${event.message}`);
      feed.prepend(item);
      while (feed.children.length > 50) feed.lastElementChild.remove();
    }
    if (live === "fleet" || live === "rollouts") return schedule();
    const id = String(event.node_id);
    if (onPage().has(id)) return schedule();
    if (live === "nodes" && event.state) {
      outside += 1;
      const note = document.getElementById("outside-changes");
      if (note) {
        note.hidden = false;
        note.textContent = `${outside} change${outside === 1 ? "" : "s"} to nodes not on this page; reload to see them.`;
      }
    }
  });
})();
