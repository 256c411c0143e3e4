// Forager viewer: the little the pages need beyond HTML. Every page works without it.
"use strict";

// Filter selects apply on change (the Filter button does the same without script).
document.querySelectorAll("[data-autosubmit]").forEach((el) => {
  el.addEventListener("change", () => el.form.submit());
});

// Trace step-through: replay the frames' changed locals to show the scope at any frame, the way
// forager/viewer/render.py:scope_at does on the server for the first paint and for ?step= links.
(function stepper() {
  const data = document.getElementById("steps-data");
  if (!data) return;
  const steps = JSON.parse(data.textContent);
  const $ = (id) => document.getElementById(id);
  let current = Number(new URLSearchParams(location.search).get("step") || 0);

  function scopeAt(index) {
    const scopes = new Map();
    for (let i = 0; i <= index; i++) {
      const s = steps[i];
      if (s.event === "call" || !scopes.has(s.depth)) {
        scopes.set(s.depth, {});
        for (const d of [...scopes.keys()]) if (d > s.depth) scopes.delete(d);
      }
      Object.assign(scopes.get(s.depth), s.changed);
      if (i < index && s.event === "return") scopes.delete(s.depth);
    }
    return scopes.get(steps[index].depth) || {};
  }

  function cell(tag, text, cls) {
    const el = document.createElement(tag);
    if (cls) el.className = cls;
    const code = document.createElement("code");
    code.textContent = text;
    el.appendChild(code);
    return el;
  }

  function show(index) {
    current = Math.max(0, Math.min(steps.length - 1, index));
    const s = steps[current];
    $("frame-no").textContent = current;
    $("frame-event").textContent = s.event;
    $("frame-event").className = "tag event-" + s.event;
    $("frame-line").textContent = s.line;
    $("frame-depth").textContent = s.depth;
    $("frame-source").textContent = s.source;
    $("frame-value").textContent = s.value == null ? "" : (s.event === "return" ? "returned " : "raised ") + s.value;
    document.querySelectorAll("#listing .src-line").forEach((line) => {
      line.classList.toggle("current", s.depth === 0 && Number(line.dataset.line) === s.line);
    });
    const body = $("locals").tBodies[0];
    body.replaceChildren();
    const scope = scopeAt(current);
    for (const [name, value] of Object.entries(scope)) {
      const row = document.createElement("tr");
      if (name in s.changed) row.className = "changed";
      row.append(cell("td", name), cell("td", value));
      body.appendChild(row);
    }
    if (!body.rows.length) body.innerHTML = '<tr><td class="muted" colspan="2">none</td></tr>';
    document.querySelectorAll("#frames tr.current").forEach((r) => r.classList.remove("current"));
    const row = document.querySelector(`#frames tr[data-i="${current}"]`);
    if (row) row.classList.add("current");
    history.replaceState(null, "", "?step=" + current);
  }

  const moves = { first: () => 0, prev: () => current - 1, next: () => current + 1, last: () => steps.length - 1 };
  for (const [id, target] of Object.entries(moves)) {
    $(id).addEventListener("click", (e) => { e.preventDefault(); show(target()); });
  }
  $("frames").addEventListener("click", (e) => {
    const link = e.target.closest("a");
    if (!link) return;
    e.preventDefault();
    show(Number(link.closest("tr").dataset.i));
  });
  document.addEventListener("keydown", (e) => {
    if (e.target.matches("input, select, textarea")) return;
    if (e.key === "ArrowRight") show(current + 1);
    if (e.key === "ArrowLeft") show(current - 1);
  });
})();
