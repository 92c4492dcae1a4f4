"""The small live page at ``/``: routes, captures, spend and latency, read from ``/stats``.

Static HTML plus a few lines of script that fetch ``/stats`` every two seconds and fill a
table; no outside assets, so it works on a machine without internet access.
"""

from __future__ import annotations

from starlette.responses import HTMLResponse

__all__ = ["page"]

_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>apidistill proxy</title>
<style>body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}
td:first-child{text-align:left}</style></head>
<body><h1>apidistill proxy</h1>
<p id="teacher">loading…</p><p id="policy"></p><p id="budget"></p>
<table id="routes"><thead><tr><th>route</th><th>requests</th><th>captured</th>
<th>upstream errors</th><th>spend USD</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th></tr>
</thead><tbody></tbody></table>
<script>
function fmt(v){return v===null||v===undefined?"–":(typeof v==="number"?v.toFixed(2):v)}
async function refresh(){
  const s = await (await fetch("/stats")).json();
  document.getElementById("teacher").textContent =
    "teacher: " + s.teacher.provider + " / " + s.teacher.model;
  document.getElementById("policy").textContent = "capture " +
    (s.capture.enabled ? "on" : "off") + " (" + s.policy.decision + "): " + s.policy.reason;
  if (s.budget) document.getElementById("budget").textContent =
    "budget: spent $" + s.budget.spent_usd + " of $" + s.budget.limit_usd;
  const body = document.querySelector("#routes tbody");
  body.replaceChildren();
  for (const [name, r] of Object.entries(s.routes)) {
    const tr = document.createElement("tr");
    tr.className = "route";
    for (const v of [name, r.requests, r.captured, r.upstream_errors, r.spend_usd,
                     fmt(r.latency_ms.p50), fmt(r.latency_ms.p95), fmt(r.latency_ms.p99)]) {
      const td = document.createElement("td"); td.textContent = v; tr.appendChild(td);
    }
    body.appendChild(tr);
  }
}
refresh(); setInterval(refresh, 2000);
</script></body></html>
"""


def page() -> HTMLResponse:
    return HTMLResponse(_HTML)
