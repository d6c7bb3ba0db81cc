// sandbar dashboard, organization pages (volumes, registries): creates and deletes through the REST API with the
// session's CSRF token. Loaded after dashboard.js, whose api() and toast() it uses. No framework, no build step.
"use strict";

// A table row from plain values (text only, never HTML), the first as the row's header (with `sub` under it when
// given), then an actions cell with a delete button.
function orgRow(tbody, id, name, sub, cells, what) {
  tbody.querySelector("tr.none")?.remove();
  const row = tbody.insertRow();
  row.dataset.id = id;
  const th = document.createElement("th");
  th.scope = "row";
  th.textContent = name;
  if (sub) {
    const d = document.createElement("div");
    d.className = "sub";
    d.textContent = sub;
    th.appendChild(d);
  }
  row.appendChild(th);
  for (const c of cells) {
    const td = row.insertCell();
    if (c instanceof Node) td.appendChild(c);
    else td.textContent = c;
  }
  const b = document.createElement("button");
  b.type = "button";
  b.dataset.action = "delete";
  b.dataset.id = id;
  b.dataset.name = name;
  b.textContent = "Delete";
  b.setAttribute("aria-label", `Delete ${what} ${name}`);
  const actions = row.insertCell();
  actions.className = "actions";
  actions.appendChild(b);
  return row;
}

// Deletes on `table`'s delete buttons, after a confirm(); a refusal (e.g. a volume still mounted) shows the API's
// message and leaves the row. The last row gone, `empty` says so.
function orgDeletes(table, what, path, warning, empty) {
  table.addEventListener("click", async (e) => {
    const b = e.target.closest('button[data-action="delete"]');
    if (!b) return;
    const { id, name } = b.dataset;
    if (!confirm(`Delete ${what} ${name}? ${warning}`)) return;
    b.disabled = true;
    try {
      await api("DELETE", `${path}/${encodeURIComponent(id)}`);
      const row = b.closest("tr");
      // Move the focus somewhere that stays: the next row's button, else the form below.
      const next = row.nextElementSibling?.querySelector("button") || row.previousElementSibling?.querySelector("button");
      const tbody = row.parentElement;
      row.remove();
      if (!tbody.rows.length) {
        const none = tbody.insertRow();
        none.className = "none";
        const c = none.insertCell();
        c.colSpan = 6;
        c.className = "empty";
        c.textContent = empty;
      }
      (next || document.querySelector("main form input"))?.focus();
      toast(`deleted ${what} ${name}`);
    } catch (err) {
      toast(`delete failed: ${err.message}`);
      b.disabled = false;
      b.focus();
    }
  });
}

function volumesPage() {
  const table = document.getElementById("volumes");
  if (!table) return;
  orgDeletes(table, "volume", "/volumes", "Its data is lost.", "No volumes yet.");
  const form = document.getElementById("create-volume");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const name = (new FormData(form).get("name") || "").trim();
    try {
      const v = await api("POST", "/volumes", { name });
      const state = document.createElement("span");
      state.className = `state state-${v.state}`;
      state.textContent = v.state;
      orgRow(table.tBodies[0], v.id, v.name, v.id, [state, "empty (on no runner yet)", "–", "just now"], "volume");
      toast(`created volume ${v.name}`);
      form.reset();
    } catch (err) {
      toast(`create failed: ${err.message}`);
    }
  });
}

function registriesPage() {
  const table = document.getElementById("registries");
  if (!table) return;
  orgDeletes(table, "registry", "/docker-registry", "Images from it can no longer be pulled with these credentials.",
    "No registry credentials yet.");
  const form = document.getElementById("create-registry");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(form);
    const body = {};
    for (const k of ["name", "url", "username", "project"]) body[k] = (f.get(k) || "").trim();
    body.password = f.get("password") || "";
    if (!body.project) delete body.project;
    try {
      const r = await api("POST", "/docker-registry", body);
      const url = document.createElement("code");
      url.textContent = r.url;
      orgRow(table.tBodies[0], r.id, r.name, null, [url, r.username, r.project || "–", "just now"], "registry");
      toast(`added registry ${r.name}`);
      form.reset();
    } catch (err) {
      toast(`create failed: ${err.message}`);
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  volumesPage();
  registriesPage();
});
