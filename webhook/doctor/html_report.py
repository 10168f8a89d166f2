"""``doctor --html FILE``: one self-contained page (inline CSS and JS, no fetch) of the report.

The page embeds the ``-o json`` document (:func:`~webhook.doctor.json_report.report_document`,
less the top-level ``fixes``, which repeat the findings' own)
and draws each family's address space on a canvas from its run-length encoded
blocks, so 15,000 nodes cost a few hundred kilobytes, not one element per block.
Hovering a block names its CIDR and its node.
"""

from __future__ import annotations

import json
from typing import Any

from webhook.doctor.json_report import report_document
from webhook.doctor.report import Report

__all__ = ["page_document", "render_html"]

_CSS = """
:root{--used:#2e7d32;--free:#e0e0e0;--reserved:#1565c0;--conflict:#c62828;--outside:#ef6c00}
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#212121;max-width:1200px}
h1{font-size:1.4em;margin:0 0 .3em} h2{font-size:1.15em;margin:1.4em 0 .4em}
.ok{color:var(--used)} .bad{color:var(--conflict)}
.root{background:#fff3e0;border-left:4px solid var(--outside);padding:.5em .8em}
.finding{border:1px solid #ddd;border-radius:4px;margin:.5em 0;padding:.5em .8em}
.finding.error{border-left:4px solid var(--conflict)} .finding.warning{border-left:4px solid #f9a825}
.code{font-weight:600} .tag{font-size:.85em;background:#eee;border-radius:3px;padding:0 .4em;margin-left:.4em}
pre{background:#f5f5f5;padding:.4em .6em;white-space:pre-wrap;word-break:break-all;margin:.3em 0}
pre.alt{border-left:3px dashed #9e9e9e}
.legend span{display:inline-block;margin-right:1em} .sw{display:inline-block;width:.9em;height:.9em;
vertical-align:-.1em;margin-right:.3em;border-radius:2px}
canvas{display:block;margin:.3em 0;image-rendering:pixelated;cursor:crosshair}
#tip{position:fixed;pointer-events:none;background:#212121;color:#fff;padding:.2em .5em;border-radius:3px;
font:12px monospace;display:none;z-index:2}
table{border-collapse:collapse} td,th{padding:.1em .6em;text-align:left;border-bottom:1px solid #eee}
"""

_JS = r"""
(function(){
"use strict";
const doc = JSON.parse(document.getElementById("report").textContent);
const $ = (tag, attrs, ...kids) => { const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v); }
  for (const k of kids) e.append(k); return e; };
const main = document.getElementById("main");
const COLORS = {u:"#2e7d32", f:"#e0e0e0", r:"#1565c0", c:"#c62828", o:"#ef6c00"};
const LABELS = {u:"used", f:"free", r:"reserved", c:"conflicting", o:"outside"};
main.append($("h1", {class: doc.healthy ? "ok" : "bad"},
  "flannel-guard doctor: " + (doc.healthy ? "HEALTHY" : "UNHEALTHY")));
if (doc.rootCause) main.append($("p", {class: "root"}, "Root cause: " + doc.rootCause));
main.append($("p", {}, "cluster-cidr " + (doc.clusterCIDR.proposed || "unknown") + " (from " +
  doc.clusterCIDR.from + ")"));

// --- the address space -------------------------------------------------------------
function ipText(big, v6) {
  if (!v6) return [24n, 16n, 8n, 0n].map(s => String((big >> s) & 255n)).join(".");
  const g = []; for (let s = 112n; s >= 0n; s -= 16n) g.push(Number((big >> s) & 0xffffn));
  let best = -1, len = 0;
  for (let i = 0; i < 8; i++) { let j = i; while (j < 8 && g[j] === 0) j++;
    if (j - i > len && j - i > 1) { best = i; len = j - i; } }
  const h = g.map(x => x.toString(16));
  if (best < 0) return h.join(":");
  return h.slice(0, best).join(":") + "::" + h.slice(best + len).join(":");
}
function parseIp(text) {
  if (text.indexOf(":") < 0) return [text.split(".").reduce((a, o) => (a << 8n) + BigInt(o), 0n), false];
  let [head, tail] = text.split("::"); const hs = head ? head.split(":") : [];
  const ts = tail !== undefined ? (tail ? tail.split(":") : []) : [];
  const groups = tail !== undefined ? [...hs, ...Array(8 - hs.length - ts.length).fill("0"), ...ts] : hs;
  return [groups.reduce((a, x) => (a << 16n) + BigInt(parseInt(x, 16)), 0n), true];
}
const grids = [];
let totalCells = 0;
const tip = document.getElementById("tip");
function grid(fam, fi) {
  const n = fam.shown, outside = fam.outside.length, cellsN = n + outside;
  const states = new Uint8Array(cellsN), owner = new Int32Array(cellsN).fill(-1);
  const codes = "ufrco"; let i = 0, k = 0;
  for (const [s, count] of fam.runs) { const c = codes.indexOf(s);
    for (let j = 0; j < count; j++, i++) { states[i] = c; if (s !== "f") owner[i] = k++; } }
  for (let j = 0; j < outside; j++) { states[n + j] = 4; owner[n + j] = -2 - j; }
  const counts = {u:0, f:0, r:0, c:0, o:0}; for (const s of states) counts[codes[s]]++;
  const cols = Math.max(16, Math.min(256, Math.ceil(Math.sqrt(cellsN * 1.6))));
  const cell = Math.max(3, Math.min(16, Math.floor(1100 / cols)));
  const rows = Math.ceil(n / cols) + (outside ? 1 + Math.ceil(outside / cols) : 0);
  const canvas = $("canvas", {width: cols * cell, height: Math.max(rows, 1) * cell,
                               "data-cells": String(cellsN), "data-family": String(fi)});
  const ctx = canvas.getContext("2d");
  const pos = idx => idx < n ? [idx % cols, Math.floor(idx / cols)]
    : [(idx - n) % cols, Math.ceil(n / cols) + 1 + Math.floor((idx - n) / cols)];
  const gap = cell > 4 ? 1 : 0;
  for (let idx = 0; idx < cellsN; idx++) { const [x, y] = pos(idx);
    ctx.fillStyle = COLORS[codes[states[idx]]]; ctx.fillRect(x * cell, y * cell, cell - gap, cell - gap); }
  const [base, v6] = parseIp(fam.clusterCIDR.split("/")[0]);
  const size = 1n << BigInt((v6 ? 128 : 32) - fam.mask);
  function describe(idx) {
    if (idx >= n) { const [node, cidr] = fam.outside[idx - n]; return cidr + " — outside — node " + node; }
    const cidr = ipText(base + BigInt(idx) * size, v6) + "/" + fam.mask;
    const s = codes[states[idx]];
    const o = owner[idx] < 0 ? null : fam.owners[owner[idx]];
    if (o === null) return cidr + " — " + LABELS[s];
    if (s === "r") return cidr + " — reserved for " + o;
    return cidr + " — " + LABELS[s] + " — node " + (typeof o === "number" ? doc.nodes[o].name : o);
  }
  function at(ev) { const r = canvas.getBoundingClientRect();
    const x = Math.floor((ev.clientX - r.left) / cell), y = Math.floor((ev.clientY - r.top) / cell);
    if (x < 0 || x >= cols) return -1;
    if (y < Math.ceil(n / cols)) { const idx = y * cols + x; return idx < n ? idx : -1; }
    const oy = y - Math.ceil(n / cols) - 1; const idx = oy * cols + x;
    return oy >= 0 && idx < outside ? n + idx : -1; }
  canvas.addEventListener("mousemove", ev => { const idx = at(ev);
    if (idx < 0) { tip.style.display = "none"; return; }
    tip.textContent = describe(idx); tip.style.display = "block";
    tip.style.left = (ev.clientX + 12) + "px"; tip.style.top = (ev.clientY + 12) + "px"; });
  canvas.addEventListener("mouseleave", () => { tip.style.display = "none"; });
  const legend = $("p", {class: "legend"});
  for (const s of "ucrfo") if (counts[s] || s !== "o")
    legend.append($("span", {}, $("span", {class: "sw", style: "background:" + COLORS[s]}),
                  LABELS[s] + " " + counts[s]));
  const title = fam.clusterCIDR + ": " + fam.blocks + " blocks of /" + fam.mask +
    (fam.shown < fam.blocks ? " (the first " + fam.shown + " drawn)" : "");
  main.append($("h3", {}, title), legend, canvas);
  totalCells += cellsN;
  grids.push({canvas, cols, cell, n, cellsN, describe,
    center(idx) { const r = canvas.getBoundingClientRect(); const [x, y] = pos(idx);
      return [r.left + x * cell + cell / 2, r.top + y * cell + cell / 2]; },
    color(idx) { const [x, y] = pos(idx);
      const d = ctx.getImageData(x * cell + 1, y * cell + 1, 1, 1).data; return [d[0], d[1], d[2]]; }});
}
main.append($("h2", {}, "Address space"));
if (!doc.addressSpace.length) main.append($("p", {}, "No cluster-cidr: nothing to draw."));
doc.addressSpace.forEach(grid);

// --- findings and fixes ---------------------------------------------------------------
main.append($("h2", {}, "Findings (" + doc.findings.length + ")"));
doc.findings.forEach((f, i) => {
  const box = $("div", {class: "finding " + f.severity});
  const head = $("div", {}, $("span", {class: "code"}, (i + 1) + ". " + f.code), " " + f.subject);
  if (f.rootCause) head.append($("span", {class: "tag"}, "root cause"));
  if (f.causedBy) head.append($("span", {class: "tag"}, "follows from " + f.causedBy));
  box.append(head, $("div", {}, f.summary));
  if (f.detail) box.append($("div", {}, f.detail));
  for (const fix of f.fixes) box.append($("pre", {class: fix.alternativeTo ? "alt" : ""},
    (fix.alternativeTo ? "or: " : "fix: ") + fix.text));
  main.append(box);
});
const bad = doc.nodes.filter(n => !n.ok);
main.append($("h2", {}, "Nodes (" + doc.nodes.length + ", " + bad.length + " with problems)"));
if (bad.length) { const t = $("table", {}, $("tr", {}, $("th", {}, "node"), $("th", {}, "podCIDRs"),
  $("th", {}, "problems")));
  for (const n of bad.slice(0, 500)) t.append($("tr", {}, $("td", {}, n.name),
    $("td", {}, n.podCIDRs.join(",") || "-"), $("td", {}, n.problems.join(", "))));
  main.append(t); }
if (doc.notes.length) { main.append($("h2", {}, "Notes")); const ul = $("ul");
  for (const n of doc.notes) ul.append($("li", {}, n)); main.append(ul); }
window.doctorGrid = {grids, totalCells};
document.body.dataset.cells = String(totalCells);
document.body.dataset.ready = "1";
})();
"""


def _embed(doc: Any) -> str:
    """JSON safe inside <script>: no '</' (closing tag) and no '<!--'."""
    return json.dumps(doc, separators=(",", ":")).replace("<", "\\u003c")


def page_document(r: Report) -> dict[str, Any]:
    """``-o json``'s document without its top-level ``fixes``: they are the findings' fixes, flattened,
    and embedding them twice doubles the page of a cluster where thousands of nodes need a patch."""
    doc = report_document(r)
    del doc["fixes"]
    return doc


def render_html(r: Report) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none';"
        " style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        "<title>flannel-guard doctor</title>"
        f"<style>{_CSS}</style></head><body><div id=\"main\"></div><div id=\"tip\"></div>"
        f"<script type=\"application/json\" id=\"report\">{_embed(page_document(r))}</script>"
        f"<script>{_JS}</script></body></html>\n"
    )
