"""``doctor --html FILE``: the report as one self-contained page, rendered on the server side.

Everything the text report shows is HTML written here (no JavaScript needed to read it):
the header names the cluster (kubeconfig context), the time and flannel-guard's version;
then the cluster-cidr sources, node CIDR allocation, the address space, the flannel
ConfigMaps, flannel-guard and its protections, the flannel pods, the findings with their
fixes in copyable blocks, the nodes and the notes.

The address space follows the address: one row per 256 node blocks (with the /24 node mask,
one row per /16), labelled with the row's own CIDR; each row is the run-length encoded states
as spans, so 15,000 nodes cost a few hundred spans, not one element per block. Script is an
enhancement only: hovering a block names its CIDR and its node (read from the node table),
and each command gets a copy button.
"""

from __future__ import annotations

import html
import ipaddress
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

from webhook import __version__
from webhook.core.rules.findings import Severity
from webhook.doctor.report import AddressFamilyMap, Report

__all__ = ["ROW_BLOCKS", "render_html"]

#: Blocks per grid row: with the /24 node mask of IPv4, a row is one /16.
ROW_BLOCKS = 256
_LABELS = {"u": "used", "f": "free", "r": "reserved", "c": "conflicting", "o": "outside"}

_CSS = """
:root{--u:#2e7d32;--f:#e0e0e0;--r:#1565c0;--c:#c62828;--o:#ef6c00}
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#212121;max-width:1200px}
h1{font-size:1.4em;margin:0 0 .2em} h2{font-size:1.15em;margin:1.4em 0 .4em} h3{font-size:1em}
.meta{color:#555;margin:0 0 .8em} .ok{color:var(--u)} .bad{color:var(--c)}
.root{background:#fff3e0;border-left:4px solid var(--o);padding:.5em .8em}
.finding{border:1px solid #ddd;border-radius:4px;margin:.5em 0;padding:.5em .8em}
.finding.error{border-left:4px solid var(--c)} .finding.warning{border-left:4px solid #f9a825}
.code{font-weight:600} .tag{font-size:.85em;background:#eee;border-radius:3px;padding:0 .4em;margin-left:.4em}
.fix{margin:.4em 0 0} .fix>span{font-size:.85em;color:#555}
pre{background:#f5f5f5;padding:.4em .6em;white-space:pre-wrap;overflow-wrap:normal;word-break:normal;
overflow-x:auto;margin:.2em 0;position:relative} pre.alt{border-left:3px dashed #9e9e9e}
button.copy{position:absolute;top:.2em;right:.2em;font-size:.8em}
table{border-collapse:collapse;margin:.3em 0}
td,th{padding:.1em .6em;text-align:left;border-bottom:1px solid #eee;vertical-align:top}
.legend span{display:inline-block;margin-right:1em}
.sw{display:inline-block;width:.9em;height:.9em;vertical-align:-.1em;margin-right:.3em;border-radius:2px}
.grid{font:12px monospace} .row{display:flex;align-items:center;margin:1px 0}
.row>b{width:11em;font-weight:normal;color:#555;flex:none;text-align:right;padding-right:.6em}
.cells{display:flex;width:768px;height:12px;flex:none;cursor:crosshair} .cells>i{display:block;min-width:0}
.u{background:var(--u)} .f{background:var(--f)} .r{background:var(--r)} .c{background:var(--c)}
.o{background:var(--o)} .pad{background:transparent}
#tip{position:fixed;pointer-events:none;background:#212121;color:#fff;padding:.2em .5em;border-radius:3px;
font:12px monospace;display:none;z-index:2}
"""

_JS = r"""
(function(){
"use strict";
const data = JSON.parse(document.getElementById("grid-data").textContent);
const rows = document.querySelectorAll("#nodes tbody tr");
const tip = document.getElementById("tip");
const nodeName = o => typeof o === "number" ? rows[o].cells[0].textContent : o;
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
const grids = []; let totalCells = 0;
document.querySelectorAll(".grid").forEach((el, fi) => {
  const fam = data[fi], n = fam.shown, cols = fam.cols, codes = [], owner = [];
  let k = 0;
  for (const [s, count] of fam.runs) for (let j = 0; j < count; j++) {
    codes.push(s); owner.push(s === "f" ? null : fam.owners[k++]); }
  const lines = [...el.querySelectorAll(".cells")];
  const [base, v6] = parseIp(fam.clusterCIDR.split("/")[0]);
  const size = 1n << BigInt((v6 ? 128 : 32) - fam.mask);
  const cellsN = n + fam.outside.length;
  function describe(idx) {
    if (idx >= n) { const [node, cidr] = fam.outside[idx - n]; return cidr + " — outside — node " + node; }
    const cidr = ipText(base + BigInt(idx) * size, v6) + "/" + fam.mask, s = codes[idx];
    if (owner[idx] === null) return cidr + " — free";
    if (s === "r") return cidr + " — reserved for " + owner[idx];
    return cidr + " — " + ({u: "used", c: "conflicting"})[s] + " — node " + nodeName(owner[idx]);
  }
  function place(idx) {
    const line = idx < n ? Math.floor(idx / cols) : Math.ceil(n / cols) + Math.floor((idx - n) / cols);
    return [lines[line], idx < n ? idx % cols : (idx - n) % cols]; }
  function center(idx) { const [line, col] = place(idx); const r = line.getBoundingClientRect();
    return [r.left + (col + 0.5) * r.width / cols, r.top + r.height / 2]; }
  lines.forEach((line, li) => {
    line.addEventListener("mousemove", ev => { const r = line.getBoundingClientRect();
      const col = Math.floor((ev.clientX - r.left) / r.width * cols);
      const first = Math.ceil(n / cols), idx = li < first ? li * cols + col : n + (li - first) * cols + col;
      if (col < 0 || col >= cols || idx >= cellsN || (li < first && idx >= n)) {
        tip.style.display = "none"; return; }
      tip.textContent = describe(idx); tip.style.display = "block";
      tip.style.left = (ev.clientX + 12) + "px"; tip.style.top = (ev.clientY + 12) + "px"; });
    line.addEventListener("mouseleave", () => { tip.style.display = "none"; });
  });
  totalCells += cellsN;
  grids.push({cellsN, describe, center, element: el,
    reveal(idx) { place(idx)[0].scrollIntoView({block: "center"}); },
    color(idx) { const [x, y] = center(idx); const hit = document.elementFromPoint(x, y);
      return getComputedStyle(hit).backgroundColor.match(/\d+/g).slice(0, 3).map(Number); }});
});
document.querySelectorAll("pre.cmd").forEach(pre => {
  if (!navigator.clipboard) return;
  const b = document.createElement("button"); b.className = "copy"; b.type = "button"; b.textContent = "copy";
  b.addEventListener("click", () => navigator.clipboard.writeText(pre.firstChild.textContent));
  pre.append(b);
});
window.doctorGrid = {grids, totalCells};
document.body.dataset.cells = String(totalCells);
document.body.dataset.ready = "1";
})();
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], ident: str = "") -> str:
    head = "".join(f"<th>{_e(h)}" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}" for c in row) for row in rows)
    return f"<table{f' id={ident!r}' if ident else ''}><thead><tr>{head}</thead><tbody>{body}</tbody></table>"


def _yes(value: bool | None) -> str:
    return "-" if value is None else "yes" if value else "NO"


def _row_label(fam: AddressFamilyMap, row: int, cols: int) -> str:
    net = fam.cluster_cidr
    size = 1 << (net.max_prefixlen - fam.mask)
    start = ipaddress.ip_address(int(net.network_address) + row * cols * size)
    prefix = max(net.prefixlen, fam.mask - (cols.bit_length() - 1))
    return f"{start}/{prefix}"


def _spans(fam: AddressFamilyMap, cols: int) -> Iterator[list[tuple[str, int, int]]]:
    """The runs cut at row ends: per row, (state, first block, count)."""
    row: list[tuple[str, int, int]] = []
    at = 0
    for state, count in fam.runs:
        while count:
            take = min(count, cols - at % cols)
            row.append((state, at, take))
            at, count = at + take, count - take
            if at % cols == 0:
                yield row
                row = []
    if row:
        yield row


def _grid(fam: AddressFamilyMap) -> str:
    net, size = fam.cluster_cidr, 1 << (fam.cluster_cidr.max_prefixlen - fam.mask)
    cols = min(ROW_BLOCKS, max(fam.shown, 1))
    counts = dict.fromkeys("ucrfo", 0)
    for s, n in fam.runs:
        counts[s] += n
    counts["o"] = len(fam.outside)
    legend = "".join(f'<span><span class="sw {s}"></span>{_LABELS[s]} {counts[s]}</span>'
                     for s in "ucrfo" if counts[s] or s != "o")
    title = f"{net}: {fam.blocks} blocks of /{fam.mask}" + (
        f" (the first {fam.shown} drawn)" if fam.shown < fam.blocks else "")
    out = [f'<h3>{_e(title)}</h3><p class="legend">{legend}</p><div class="grid">']
    for r, row in enumerate(_spans(fam, cols)):
        cells = []
        for state, first, count in row:
            lo = ipaddress.ip_address(int(net.network_address) + first * size)
            hi = ipaddress.ip_address(int(net.network_address) + (first + count - 1) * size)
            what = f"{lo}/{fam.mask}" if count == 1 else f"{lo}/{fam.mask} … {hi}/{fam.mask}, {count} blocks"
            cells.append(f'<i class="{state}" style="flex:{count}" title="{_e(what)}: {_LABELS[state]}"></i>')
        used = sum(c for _, _, c in row)
        if used < cols:
            cells.append(f'<i class="pad" style="flex:{cols - used}"></i>')
        out.append(f'<div class="row"><b>{_e(_row_label(fam, r, cols))}</b><div class="cells">'
                   f'{"".join(cells)}</div></div>')
    for start in range(0, len(fam.outside), cols):
        part = fam.outside[start:start + cols]
        cells = [f'<i class="o" style="flex:1" title="{_e(c)}: outside, node {_e(n)}"></i>' for n, c in part]
        if len(part) < cols:
            cells.append(f'<i class="pad" style="flex:{cols - len(part)}"></i>')
        out.append(f'<div class="row"><b>outside</b><div class="cells">{"".join(cells)}</div></div>')
    out.append("</div>")
    if fam.outside:
        out.append("<p>Outside the cluster-cidr: " + _e(", ".join(f"{n} ({c})" for n, c in fam.outside))
                   + "</p>")
    return "".join(out)


def _findings(r: Report) -> str:
    if not r.findings:
        return "<h2>Findings: none</h2>"
    numbers: dict[str, int] = {}
    out = [f"<h2>Findings ({len(r.findings)})</h2>"]
    for i, f in enumerate(r.findings, 1):
        numbers.setdefault(f.code, i)
        tags = '<span class="tag">root cause</span>' if f.root_cause else ""
        if f.caused_by and f.caused_by in numbers:
            tags += f'<span class="tag">follows from {numbers[f.caused_by]}</span>'
        head = f"{i}. {f.severity.value.upper()} {_e(f.code)}"
        parts = [f'<div class="finding {f.severity.value}"><div><span class="code">{head}</span>'
                 f" {_e(f.subject)}{tags}</div><div>{_e(f.summary)}</div>"]
        if f.detail:
            parts.append(f"<div>{_e(f.detail)}</div>")
        for fix in f.fixes:
            label = "or:" if fix.alternative_to else "fix:"
            cls = "cmd alt" if fix.alternative_to else "cmd"
            parts.append(f'<div class="fix"><span>{label}</span><pre class="{cls}"><code>{_e(fix.text)}'
                         "</code></pre></div>")
        out.append("".join(parts) + "</div>")
    return "".join(out)


def _allocation(r: Report) -> str:
    if not r.controller_manager_found:
        alloc = "unknown (no kube-controller-manager pod found)"
    else:
        alloc = {True: "yes", False: "NO (--allocate-node-cidrs=false)"}.get(
            r.allocate_node_cidrs, "NO (--allocate-node-cidrs not set)")  # type: ignore[arg-type]
    return (f"<p>kube-controller-manager allocates node CIDRs: {_e(alloc)}; node mask /{r.mask_v4} (IPv4),"
            f" /{r.mask_v6} (IPv6)</p>")


def _grid_data(r: Report) -> str:
    """What the hover needs (the node names are read from the node table): JSON safe in <script>."""
    doc = [{**m.to_json(), "cols": min(ROW_BLOCKS, max(m.shown, 1))} for m in r.address_space]
    return json.dumps(doc, separators=(",", ":")).replace("<", "\\u003c")


def render_html(r: Report, *, cluster: str = "", generated: datetime | None = None) -> str:
    """The page; ``cluster`` names the kubeconfig context (or in-cluster), ``generated`` the time."""
    when = (generated or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    errors = sum(1 for f in r.findings if f.severity is Severity.ERROR)
    state = "HEALTHY" if not r.findings else "UNHEALTHY"
    valued = [s for s in r.sources if s.status.startswith(("effective", "agrees", "differs"))]
    agreement = ("no cluster-cidr source has a value" if not valued
                 else "sources agree" if r.agree else "sources DISAGREE")
    body = [f'<h1 class="{"ok" if not r.findings else "bad"}">flannel-guard doctor: {state}'
            f" ({errors} error(s), {len(r.findings) - errors} warning(s))</h1>",
            f'<p class="meta">cluster <b>{_e(cluster or "unknown")}</b> · {_e(when)} ·'
            f" flannel-guard {_e(__version__)}</p>"]
    if r.root_cause:
        body.append(f'<p class="root">Root cause: {_e(r.root_cause.summary)}</p>')
    body += [f"<h2>Cluster-cidr {_e(r.describe_cidr())} ({_e(agreement)})</h2>",
             f"<p>from {_e(r.cluster_cidr_origin)}</p>",
             _table(["source", "value", "status"], [[s.label, s.value, s.status] for s in r.sources]),
             "<h2>Node CIDR allocation</h2>", _allocation(r)]
    if r.capacity:
        body.append(_table(["cluster-cidr", "mask", "blocks", "nodes", "used", "free"],
                           [[c.cluster_cidr, f"/{c.mask}", c.blocks, c.nodes, c.used, c.blocks - c.used]
                            for c in r.capacity]))
    body.append("<h2>Address space</h2>")
    body += [_grid(m) for m in r.address_space] or ["<p>No cluster-cidr: nothing to draw.</p>"]
    body.append("<h2>Flannel ConfigMaps</h2>")
    body.append(_table(["ConfigMap", "Network", "IPv6Network", "backend", "flannel accepts", "matches"],
                       [[c.ref, c.network, c.ipv6_network, c.backend, "yes" if c.accepted else "NO",
                         _yes(c.matches)] for c in r.configmaps]) if r.configmaps else "<p>none found</p>")
    if r.guard is not None:
        g = r.guard
        body += ["<h2>flannel-guard</h2>",
                 _table(["namespace", "validating", "mutating", "ready endpoints", "cert not after",
                         "caBundle verifies", "allocator"],
                        [[g.namespace, _yes(g.validating), _yes(g.mutating), g.ready_endpoints,
                          g.cert_not_after or "-", _yes(g.cert_verified), g.allocator]])]
        if g.protections:
            body += ["<h3>Protections (what holds while flannel-guard is down)</h3>",
                     _table(["kind", "name", "state", "what it does"],
                            [[p.kind, p.name, p.state, p.detail] for p in g.protections])]
    body.append(f"<h2>Flannel pods not ready ({len(r.pods_not_ready)} of {r.pods_seen})</h2>")
    if r.pods_not_ready:
        body.append(_table(["pod", "node", "state", "last log line"],
                           [[p.ref, p.node or "-", p.state or "-", p.last_log_line or "-"]
                            for p in r.pods_not_ready]))
    body.append(_findings(r))
    body.append(f"<h2>Nodes ({len(r.nodes)}, {sum(1 for n in r.nodes if n.problems)} with problems)</h2>")
    body.append(_table(["node", "podCIDRs", "status"],
                       [[n.name, ",".join(n.pod_cidrs) or "-", ", ".join(n.problems) or "ok"]
                        for n in r.nodes], "nodes"))
    if r.notes:
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in r.notes) + "</ul>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none';"
        " style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<title>flannel-guard doctor: {_e(cluster or 'unknown cluster')}</title>"
        f"<style>{_CSS}</style></head><body><main id=\"main\">{''.join(body)}</main><div id=\"tip\"></div>"
        f"<script type=\"application/json\" id=\"grid-data\">{_grid_data(r)}</script>"
        f"<script>{_JS}</script></body></html>\n"
    )
