// sandbar dashboard, one sandbox's workbench: terminal, files, entrypoint logs, listening ports and usage.
// Toolbox calls go to /toolbox/{id}/... on this origin: the proxy serves this page and takes the session cookie
// as their credential. REST calls go to /api with the session's CSRF token. No framework, no build step.
"use strict";

(() => {
  const wb = document.getElementById("workbench");
  if (!wb) return;
  const id = wb.dataset.id;
  const tb = `/toolbox/${encodeURIComponent(id)}`;
  const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";
  const usable = wb.dataset.viaProxy === "true" && wb.dataset.started === "true";
  const say = (el, text) => { const e = document.getElementById(el); if (e) e.textContent = text; };

  async function failure(r) {
    if (r.status === 401) location.assign("/dashboard/login");
    let m = r.statusText;
    try { m = (await r.json()).message || m; } catch (_) { /* not JSON */ }
    return new Error(`${r.status}: ${m}`);
  }

  async function toolbox(method, path, body, headers) {
    const r = await fetch(tb + path, { method, body, headers: headers || {}, credentials: "same-origin" });
    if (!r.ok) throw await failure(r);
    return r;
  }

  async function rest(method, path) {
    const r = await fetch("/api" + path, {
      method, credentials: "same-origin", headers: { "X-Sandbar-CSRF": csrf, Accept: "application/json" },
    });
    if (!r.ok) throw await failure(r);
    return r.json();
  }

  function wsUrl(path) {
    return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${tb}${path}`;
  }

  // ---- Terminal: a PTY session of the toolbox, reattached when one of ours is still running ----
  let term = null;
  let fit = null;
  let socket = null;
  let sessionId = null;
  const storeKey = `sandbar-pty-${id}`;

  function ensureTerminal() {
    if (term) return true;
    if (typeof Terminal === "undefined") { say("term-status", "xterm.js is not in this build"); return false; }
    term = new Terminal({ cursorBlink: true, scrollback: 5000, fontSize: 14 });
    window.term = term;
    if (typeof FitAddon !== "undefined") { fit = new FitAddon.FitAddon(); term.loadAddon(fit); }
    term.open(document.getElementById("terminal"));
    fit?.fit();
    term.onData((d) => { if (socket && socket.readyState === WebSocket.OPEN) socket.send(d); });
    term.onResize(({ cols, rows }) => {
      if (sessionId) {
        toolbox("POST", `/process/pty/${encodeURIComponent(sessionId)}/resize`, JSON.stringify({ cols, rows }),
          { "Content-Type": "application/json" }).catch(() => {});
      }
    });
    window.addEventListener("resize", () => fit?.fit());
    return true;
  }

  async function findSession() {
    const remembered = sessionStorage.getItem(storeKey);
    const list = await (await toolbox("GET", "/process/pty")).json();
    const ours = (list.sessions || []).filter((s) => s.active && s.id.startsWith("dashboard-"));
    return ours.find((s) => s.id === remembered)?.id || ours[0]?.id || null;
  }

  async function newSession() {
    const sid = `dashboard-${crypto.randomUUID().slice(0, 8)}`;
    const body = JSON.stringify({ id: sid, cols: term.cols, rows: term.rows, envs: { TERM: "xterm-256color" } });
    await toolbox("POST", "/process/pty", body, { "Content-Type": "application/json" });
    return sid;
  }

  async function openTerminal(fresh) {
    if (!ensureTerminal()) return;
    if (socket) { socket.onclose = null; socket.close(1000); socket = null; }
    say("term-status", "connecting…");
    try {
      sessionId = (!fresh && await findSession()) || await newSession();
    } catch (err) {
      say("term-status", `terminal failed: ${err.message}`);
      return;
    }
    sessionStorage.setItem(storeKey, sessionId);
    term.reset();
    const ws = new WebSocket(wsUrl(`/process/pty/${encodeURIComponent(sessionId)}/connect`));
    ws.binaryType = "arraybuffer";
    socket = ws;
    ws.onmessage = (e) => {
      if (typeof e.data === "string") {
        try {
          const m = JSON.parse(e.data);
          if (m.type === "control") {
            if (m.status === "connected") say("term-status", `connected to ${sessionId}`);
            else if (m.error) say("term-status", m.error);
            return;
          }
        } catch (_) { /* plain text output */ }
        term.write(e.data);
      } else {
        term.write(new Uint8Array(e.data));
      }
    };
    ws.onopen = () => {
      term.focus();
      toolbox("POST", `/process/pty/${encodeURIComponent(sessionId)}/resize`,
        JSON.stringify({ cols: term.cols, rows: term.rows }), { "Content-Type": "application/json" }).catch(() => {});
    };
    ws.onclose = (e) => {
      if (socket === ws) socket = null;
      say("term-status", `disconnected (${e.code}${e.reason ? ": " + e.reason : ""}); Open terminal reattaches`);
    };
  }

  // ---- Files: list a folder, open text files, upload (drag and drop or picker), download ----
  let folder = "";

  function join(dir, name) {
    return dir.endsWith("/") ? dir + name : `${dir}/${name}`;
  }

  function size(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
    if (n < 1 << 30) return `${(n / (1 << 20)).toFixed(1)} MiB`;
    return `${(n / (1 << 30)).toFixed(1)} GiB`;
  }

  async function listFolder(dir) {
    const rows = document.getElementById("file-rows");
    let list;
    try {
      list = await (await toolbox("GET", `/files?path=${encodeURIComponent(dir)}`)).json();
    } catch (err) {
      toastText(`cannot list ${dir}: ${err.message}`);
      return;
    }
    folder = dir;
    document.getElementById("files-path").value = dir;
    rows.textContent = "";
    list.sort((a, b) => (b.isDir - a.isDir) || a.name.localeCompare(b.name));
    for (const f of list) {
      const path = join(dir, f.name);
      const tr = rows.insertRow();
      tr.dataset.name = f.name;
      const th = document.createElement("th");
      th.scope = "row";
      const open = document.createElement("button");
      open.type = "button";
      open.className = "link";
      open.textContent = f.isDir ? `${f.name}/` : f.name;
      open.setAttribute("aria-label", f.isDir ? `Open folder ${f.name}` : `Show ${f.name}`);
      open.addEventListener("click", () => (f.isDir ? listFolder(path) : showFile(path, f.size)));
      th.appendChild(open);
      tr.appendChild(th);
      tr.insertCell().textContent = f.isDir ? "–" : size(f.size);
      tr.insertCell().textContent = f.modTime ? new Date(f.modTime).toLocaleString() : "";
      const actions = tr.insertCell();
      if (!f.isDir) {
        const a = document.createElement("a");
        a.href = `${tb}/files/download?path=${encodeURIComponent(path)}`;
        a.download = f.name;
        a.textContent = "Download";
        a.setAttribute("aria-label", `Download ${f.name}`);
        actions.appendChild(a);
      }
    }
    if (!list.length) {
      const c = rows.insertRow().insertCell();
      c.colSpan = 4;
      c.textContent = "Empty folder.";
    }
  }

  async function showFile(path, bytes) {
    const view = document.getElementById("file-view");
    const body = document.getElementById("file-view-body");
    say("file-view-name", path);
    view.hidden = false;
    if (bytes > 1 << 20) { body.textContent = `${size(bytes)}: too large to show here; download it.`; return; }
    try {
      const buf = new Uint8Array(await (await toolbox("GET", `/files/download?path=${encodeURIComponent(path)}`)).arrayBuffer());
      const text = new TextDecoder("utf-8", { fatal: true });
      try { body.textContent = text.decode(buf); } catch (_) { body.textContent = "(binary file: download it)"; }
    } catch (err) {
      body.textContent = `cannot read: ${err.message}`;
    }
    body.focus();
  }

  async function upload(files) {
    const dir = folder;
    for (const file of files) {
      const form = new FormData();
      form.append("file", file, file.name);
      try {
        await toolbox("POST", `/files/upload?path=${encodeURIComponent(join(dir, file.name))}`, form);
        toastText(`uploaded ${file.name}`);
      } catch (err) {
        toastText(`upload of ${file.name} failed: ${err.message}`);
      }
    }
    await listFolder(dir);
  }

  function toastText(t) { say("toast", t); }

  // ---- Entrypoint logs, followed over the toolbox's log WebSocket (Daytona's marker-prefixed chunks) ----
  let logSocket = null;

  async function followLogs() {
    if (logSocket) return;
    const pre = document.getElementById("entry-logs");
    pre.textContent = "";
    try {
      await toolbox("GET", "/process/session/entrypoint");
    } catch (err) {
      say("logs-status", err.message.startsWith("404") ? "this sandbox's image has no entrypoint" : err.message);
      return;
    }
    const ws = new WebSocket(wsUrl("/process/session/entrypoint/logs?follow=true"));
    ws.binaryType = "arraybuffer";
    logSocket = ws;
    const dec = new TextDecoder();
    say("logs-status", "following");
    ws.onmessage = (e) => {
      let text = typeof e.data === "string" ? e.data : dec.decode(new Uint8Array(e.data), { stream: true });
      text = text.replace(/\x01\x01\x01|\x02\x02\x02/g, "");
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.textContent += text;
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    };
    ws.onclose = (e) => {
      logSocket = null;
      say("logs-status", e.code === 1000 ? "the entrypoint ended" : `stopped (${e.code}${e.reason ? ": " + e.reason : ""})`);
    };
  }

  // ---- Listening ports, each with a link through the proxy ----
  async function ports() {
    const ul = document.getElementById("ports");
    ul.setAttribute("aria-busy", "true");
    let list;
    try {
      list = (await (await toolbox("GET", "/port")).json()).ports || [];
    } catch (err) {
      ul.textContent = `cannot list ports: ${err.message}`;
      return;
    } finally {
      ul.removeAttribute("aria-busy");
    }
    ul.textContent = "";
    // The daemon's own ports (toolbox, SSH, web terminal) are not the sandbox's apps.
    list = list.filter((p) => ![2280, 22220, 22222].includes(p));
    if (!list.length) { ul.textContent = "Nothing is listening."; return; }
    for (const port of list) {
      const li = document.createElement("li");
      li.textContent = `port ${port} `;
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = "Make a link";
      b.setAttribute("aria-label", `Make a preview link for port ${port}`);
      b.addEventListener("click", async () => {
        try {
          const p = await rest("GET", `/sandbox/${encodeURIComponent(id)}/ports/${port}/signed-preview-url?expiresInSeconds=3600`);
          const a = document.createElement("a");
          a.href = p.url;
          a.textContent = p.url;
          a.target = "_blank";
          a.rel = "noopener noreferrer";
          b.replaceWith(a);
        } catch (err) {
          toastText(`preview link failed: ${err.message}`);
        }
      });
      li.appendChild(b);
      ul.appendChild(li);
    }
  }

  // ---- Usage: small SVG charts of the last hour ----
  const SVG = "http://www.w3.org/2000/svg";

  function chart(title, points, max, fmt) {
    const w = 240, h = 60;
    const fig = document.createElement("figure");
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.setAttribute("role", "img");
    const last = points.length ? points[points.length - 1] : 0;
    svg.setAttribute("aria-label", `${title}: ${fmt(last)} now`);
    const top = Math.max(max || 0, ...points, 1e-9);
    const line = document.createElementNS(SVG, "polyline");
    const step = points.length > 1 ? w / (points.length - 1) : w;
    line.setAttribute("points", points.map((v, i) => `${(i * step).toFixed(1)},${(h - 2 - (v / top) * (h - 4)).toFixed(1)}`).join(" "));
    line.setAttribute("class", "spark");
    svg.appendChild(line);
    fig.appendChild(svg);
    const cap = document.createElement("figcaption");
    cap.textContent = `${title}: ${fmt(last)}${max ? ` of ${fmt(max)}` : ""}`;
    fig.appendChild(cap);
    return fig;
  }

  async function usage() {
    const box = document.getElementById("usage");
    let u;
    try { u = await rest("GET", `/sandbox/${encodeURIComponent(id)}/usage`); } catch (_) { return; }
    if (!u.sampledAt) return;
    const h = u.history.length ? u.history : [u];
    box.textContent = "";
    box.appendChild(chart("CPU (cores)", h.map((p) => p.cpuCores || 0), null, (v) => v.toFixed(2)));
    box.appendChild(chart("Memory", h.map((p) => p.memoryBytes), u.memoryLimitBytes, size));
    if (u.diskBytes != null) box.appendChild(chart("Disk", h.map((p) => p.diskBytes || 0), null, size));
    box.dataset.samples = String(h.length);
  }

  document.getElementById("term-open")?.addEventListener("click", () => openTerminal(false));
  document.getElementById("term-new")?.addEventListener("click", () => openTerminal(true));
  document.getElementById("files-nav")?.addEventListener("submit", (e) => {
    e.preventDefault();
    listFolder(document.getElementById("files-path").value.trim() || "/");
  });
  document.getElementById("files-up")?.addEventListener("click", () => {
    const up = folder.replace(/\/[^/]*\/?$/, "") || "/";
    listFolder(up);
  });
  const drop = document.getElementById("files-drop");
  drop?.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop?.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop?.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer?.files?.length) upload(e.dataTransfer.files);
  });
  document.getElementById("files-upload")?.addEventListener("change", (e) => {
    if (e.target.files.length) upload(e.target.files).then(() => { e.target.value = ""; });
  });
  document.getElementById("logs-follow")?.addEventListener("click", followLogs);
  document.getElementById("ports-refresh")?.addEventListener("click", ports);

  usage();
  setInterval(usage, 30000);
  if (!usable) {
    for (const b of wb.querySelectorAll("#term-open, #term-new, #files-nav button, #logs-follow, #ports-refresh")) b.disabled = true;
    return;
  }
  toolbox("GET", "/work-dir")
    .then(async (r) => (await r.json()).dir || "/")
    .catch(() => "/")
    .then(listFolder);
  ports();
  followLogs();
  openTerminal(false);
})();
