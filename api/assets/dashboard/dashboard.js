// sandbar dashboard: sends the REST calls the page's buttons and forms ask for (with the session's CSRF token),
// and applies the live updates the server sends. No framework, no build step.
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";

function toast(text) {
  const t = document.getElementById("toast");
  if (t) t.textContent = text;
}

async function api(method, path, body) {
  const headers = { "X-Sandbar-CSRF": csrf, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch("/api" + path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status === 401) {
    location.assign("/dashboard/login");
    throw new Error("signed out");
  }
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  if (!r.ok) throw new Error((data && data.message) || r.statusText);
  return data;
}

function lines(text) {
  const out = {};
  for (const line of (text || "").split("\n")) {
    const i = line.indexOf("=");
    if (i > 0) out[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  return out;
}

function sandboxes() {
  const table = document.getElementById("sandboxes");
  if (!table) return;
  const body = document.getElementById("sandbox-rows");
  const status = document.getElementById("live-status");
  const events = new EventSource(table.dataset.events);
  events.addEventListener("rows", (e) => {
    // Keep the keyboard focus on the same button across the update.
    const f = document.activeElement;
    const key = f && f.dataset && f.dataset.action ? [f.dataset.action, f.dataset.id] : null;
    body.innerHTML = e.data;
    if (key) body.querySelector(`button[data-action="${key[0]}"][data-id="${CSS.escape(key[1])}"]`)?.focus();
    status.textContent = "live";
  });
  events.addEventListener("signedout", () => location.assign("/dashboard/login"));
  events.onerror = () => {
    status.textContent = "reconnecting…";
    // The stream may end before its `signedout` event arrives (a proxy between closes it first), and a 401 ends
    // it for good: ask whether the session lives (api() goes to sign in on a 401).
    api("GET", "/api-keys/current").then(() => {
      if (events.readyState === EventSource.CLOSED) location.reload();
    }).catch(() => {});
  };

  body.addEventListener("click", async (e) => {
    const b = e.target.closest("button[data-action]");
    if (!b) return;
    const { action, id } = b.dataset;
    if (action === "delete" && !confirm(`Delete sandbox ${id}? Its files are lost.`)) return;
    b.disabled = true;
    try {
      if (action === "delete") await api("DELETE", `/sandbox/${encodeURIComponent(id)}`);
      else if (action === "fork") await api("POST", `/sandbox/${encodeURIComponent(id)}/fork`, {});
      else await api("POST", `/sandbox/${encodeURIComponent(id)}/${action}`);
      toast(`${action}: ${id}`);
    } catch (err) {
      toast(`${action} failed: ${err.message}`);
      b.disabled = false;
    }
  });

  const form = document.getElementById("create-sandbox");
  form?.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(form);
    const body = { env: lines(f.get("env")), labels: lines(f.get("labels")) };
    for (const k of ["name", "snapshot", "image", "networkAllowList"]) {
      const v = (f.get(k) || "").trim();
      if (v) body[k] = v;
    }
    for (const k of ["cpu", "memory", "disk", "autoStopInterval", "autoArchiveInterval", "autoDeleteInterval"]) {
      const v = (f.get(k) || "").trim();
      if (v) body[k] = parseInt(v, 10);
    }
    if (f.get("networkBlockAll")) body.networkBlockAll = true;
    toast("creating…");
    try {
      const sb = await api("POST", "/sandbox", body);
      toast(`created ${sb.name} (${sb.state})`);
      form.reset();
    } catch (err) {
      toast(`create failed: ${err.message}`);
    }
  });
}

function keys() {
  const table = document.getElementById("keys");
  if (!table) return;
  table.addEventListener("click", async (e) => {
    const b = e.target.closest("button[data-revoke]");
    if (!b) return;
    const name = b.dataset.revoke;
    if (!confirm(`Revoke the key ${name}? Scripts using it stop working.`)) return;
    try {
      await api("DELETE", `/api-keys/${encodeURIComponent(name)}`);
      b.closest("tr").remove();
      toast(`revoked ${name}`);
    } catch (err) {
      toast(`revoke failed: ${err.message}`);
    }
  });
  const form = document.getElementById("create-key");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(form);
    const body = { name: f.get("name"), permissions: [] };
    if (f.get("expiresAt")) body.expiresAt = new Date(f.get("expiresAt")).toISOString();
    try {
      const k = await api("POST", "/api-keys", body);
      document.getElementById("new-key").hidden = false;
      const out = document.getElementById("new-key-value");
      out.value = k.value;
      out.focus();
      out.select();
      const row = table.tBodies[0].insertRow();
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = k.name;
      row.appendChild(th);
      const masked = row.insertCell();
      const code = document.createElement("code");
      code.textContent = "sbk_…" + k.value.slice(-4);
      masked.appendChild(code);
      row.insertCell().textContent = "just now";
      row.insertCell().textContent = k.expiresAt ? new Date(k.expiresAt).toLocaleString() : "never";
      const rb = document.createElement("button");
      rb.type = "button";
      rb.dataset.revoke = k.name;
      rb.textContent = "Revoke";
      rb.setAttribute("aria-label", `Revoke ${k.name}`);
      row.insertCell().appendChild(rb);
      form.reset();
    } catch (err) {
      toast(`create failed: ${err.message}`);
    }
  });
}

function sandboxPage() {
  const ssh = document.querySelector("button[data-ssh]");
  ssh?.addEventListener("click", async () => {
    try {
      const a = await api("POST", `/sandbox/${encodeURIComponent(ssh.dataset.ssh)}/ssh-access?expiresInMinutes=60`);
      const out = document.getElementById("ssh-out");
      out.value = a.sshCommand;
      out.focus();
      out.select();
    } catch (err) {
      toast(`SSH access failed: ${err.message}`);
    }
  });
  const form = document.getElementById("preview-form");
  form?.addEventListener("submit", async (e) => {
    e.preventDefault();
    const port = parseInt(new FormData(form).get("port"), 10);
    try {
      const p = await api("GET",
        `/sandbox/${encodeURIComponent(form.dataset.id)}/ports/${port}/signed-preview-url?expiresInSeconds=3600`);
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = p.url;
      a.textContent = `port ${port}: ${p.url}`;
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      li.appendChild(a);
      document.getElementById("preview-links").appendChild(li);
    } catch (err) {
      toast(`preview link failed: ${err.message}`);
    }
  });
}

async function followLog(id) {
  const pre = document.getElementById("build-log");
  pre.textContent = "";
  const r = await fetch(`/api/snapshots/${encodeURIComponent(id)}/build-logs?follow=true`, { credentials: "same-origin" });
  if (!r.ok) { pre.textContent = `no build log (${r.status})`; return; }
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    pre.textContent += dec.decode(value, { stream: true });
    pre.scrollTop = pre.scrollHeight;
  }
  pre.dataset.done = "true";
}

async function snapshots() {
  const body = document.getElementById("snapshot-rows");
  if (!body) return;
  async function load() {
    const page = await api("GET", "/snapshots?limit=100");
    body.textContent = "";
    if (!page.items.length) {
      const c = body.insertRow().insertCell();
      c.colSpan = 6;
      c.textContent = "No snapshots yet.";
    }
    for (const s of page.items) {
      const row = body.insertRow();
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = s.name;
      row.appendChild(th);
      const st = document.createElement("span");
      st.className = `state state-${s.state}`;
      st.textContent = s.state + (s.errorReason ? ` — ${s.errorReason}` : "");
      row.insertCell().appendChild(st);
      row.insertCell().textContent = s.imageName;
      row.insertCell().textContent = `${s.cpu} CPU · ${s.mem} GiB · ${s.disk} GiB`;
      row.insertCell().textContent = new Date(s.createdAt).toLocaleString();
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = "Show log";
      b.setAttribute("aria-label", `Show the build log of ${s.name}`);
      b.addEventListener("click", () => followLog(s.id));
      const cell = row.insertCell();
      cell.className = "actions";
      cell.appendChild(b);
      const d = document.createElement("button");
      d.type = "button";
      d.textContent = "Delete";
      d.dataset.deleteSnapshot = s.name;
      d.setAttribute("aria-label", `Delete the snapshot ${s.name}`);
      d.addEventListener("click", async () => {
        if (!confirm(`Delete the snapshot ${s.name}? Sandboxes can no longer be made from it.`)) return;
        try {
          await api("DELETE", `/snapshots/${encodeURIComponent(s.id)}`);
          toast(`deleted ${s.name}`);
          await load();
        } catch (err) {
          toast(`delete failed: ${err.message}`);
        }
      });
      cell.appendChild(d);
    }
  }
  await load();
  const form = document.getElementById("create-snapshot");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(form);
    try {
      const s = await api("POST", "/snapshots", { name: f.get("name"), buildInfo: { dockerfileContent: f.get("dockerfile") } });
      toast(`building ${s.name}`);
      await load();
      await followLog(s.id);
      await load();
    } catch (err) {
      toast(`build failed: ${err.message}`);
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  sandboxes();
  keys();
  sandboxPage();
  snapshots().catch((err) => toast(err.message));
});
