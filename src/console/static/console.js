// sendlater console: times in the viewer's zone, the viewer's zone in forms, and live
// updates of the page's list over Server-Sent Events. No inline script anywhere (the
// Content-Security-Policy allows only this file).
"use strict";

const zone = (() => {
  try { return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC"; } catch (e) { return "UTC"; }
})();

function localTimes(root) {
  for (const el of root.querySelectorAll("time.local")) {
    const d = new Date(el.getAttribute("datetime"));
    if (isNaN(d)) continue;
    el.textContent = d.toLocaleString(undefined, {
      year: "numeric", month: "short", day: "numeric",
      hour: "2-digit", minute: "2-digit", timeZoneName: "short",
    });
  }
  for (const el of root.querySelectorAll("input.tz")) el.value = zone;
  for (const el of root.querySelectorAll(".tz-name")) el.textContent = zone;
}

function channelFields() {
  const form = document.getElementById("schedule");
  if (!form) return;
  const pick = form.querySelector("select[name=channel]");
  const show = () => {
    form.querySelector("fieldset.email").hidden = pick.value !== "email";
    form.querySelector("fieldset.chat").hidden = pick.value !== "chat";
  };
  pick.addEventListener("change", show);
  show();
}

function live() {
  const box = document.getElementById("live");
  if (!box || !window.EventSource) return;
  const ticket = box.dataset.ticket;
  let pending = null;
  const refresh = async () => {
    pending = null;
    try {
      const r = await fetch(box.dataset.fragment, { credentials: "same-origin" });
      if (!r.ok) return;
      box.innerHTML = await r.text();
      localTimes(box);
      box.dispatchEvent(new CustomEvent("refreshed", { bubbles: true }));
    } catch (e) { /* the next event tries again */ }
  };
  // From the sequence the page was rendered at: nothing committed since is missed
  // (a reconnect resumes by itself, with Last-Event-ID).
  const after = box.dataset.after;
  const source = new EventSource(after ? box.dataset.events + "?after=" + encodeURIComponent(after) : box.dataset.events);
  source.addEventListener("change", (ev) => {
    let change = {};
    try { change = JSON.parse(ev.data); } catch (e) { return; }
    if (ticket !== undefined && change.ticket !== ticket) return;
    // Coalesced: a burst of changes is one re-read (each re-read of rows makes the
    // server write changed items back first).
    if (!pending) pending = setTimeout(refresh, 250);
  });
  source.addEventListener("open", () => { document.body.dataset.live = "on"; });
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  channelFields();
  live();
});
