/**
 * The status page (`/`): one HTML document, no external resources. The
 * figures are those of /status.json: the page carries a copy of that JSON
 * (so it shows figures at once, without a second request) and a small script
 * renders it, then refreshes it from /status.json every 15 s. Every value is
 * inserted as text (textContent), never as markup.
 */
import { createHash } from 'node:crypto';

const STYLE = `
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .2em}h2{font-size:1.05em;margin:1.4em 0 .4em}
table{border-collapse:collapse}td,th{padding:.15em .8em .15em 0;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.error{color:#b00020}.warning{color:#8a5a00}.ok{color:#1b5e20}.info{color:#444}
.muted{color:#777}svg{background:#fff;border:1px solid #ddd}
.legend span{display:inline-block;margin-right:1em}.legend i{display:inline-block;width:.8em;height:.8em;margin-right:.3em}
`;

const COLORS: Record<string, string> = { received: '#1565c0', delivered: '#2e7d32', deferred: '#ef6c00', bounced: '#c62828', rejected: '#6a1b9a' };

/** Runs in the browser. Plain ES2017, no library. */
const SCRIPT = `
(function () {
  'use strict';
  var COLORS = ${JSON.stringify(COLORS)};
  var KINDS = ['received', 'delivered', 'deferred', 'bounced', 'rejected'];
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = String(text);
    return e;
  }
  function svg(tag, attrs) {
    var e = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (var k in attrs) e.setAttribute(k, String(attrs[k]));
    return e;
  }
  function fill(id, nodes) {
    var box = document.getElementById(id);
    while (box.firstChild) box.removeChild(box.firstChild);
    nodes.forEach(function (n) { box.appendChild(n); });
  }
  function row(cells) {
    var tr = el('tr');
    cells.forEach(function (c) { tr.appendChild(c); });
    return tr;
  }
  function uptime(s) {
    if (s === null || s === undefined) return '-';
    var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    return (d ? d + 'd ' : '') + (d || h ? h + 'h ' : '') + m + 'm ' + (s % 60) + 's';
  }
  function render(st) {
    document.getElementById('generated').textContent = st.generated_at;
    document.getElementById('hostname').textContent = st.hostname;
    fill('queues', Object.keys(st.queue.counts).map(function (q) {
      return row([el('td', {}, q), el('td', { 'class': 'n', 'data-figure': 'queue.' + q }, st.queue.counts[q])]);
    }).concat([row([el('td', {}, 'oldest message (s)'), el('td', { 'class': 'n', 'data-figure': 'queue.oldest_age_seconds' }, st.queue.oldest_age_seconds)])]));
    fill('totals', KINDS.concat(['connections', 'auth_failures', 'dkim_signed', 'tls_in', 'tls_out']).map(function (k) {
      return row([el('td', {}, k.replace('_', ' ')), el('td', { 'class': 'n', 'data-figure': 'totals.' + k }, st.totals[k])]);
    }));
    chart(st.flow);
    var dns = st.dns;
    document.getElementById('dns-state').textContent = dns.state + (dns.checked_at ? ' at ' + dns.checked_at : '') + (dns.error ? ': ' + dns.error : '');
    document.getElementById('dns-state').setAttribute('data-figure', 'dns.state');
    fill('dns', dns.findings.map(function (f) {
      var li = el('li', { 'class': f.level, 'data-finding': f.check });
      li.appendChild(el('b', {}, f.level + ' '));
      li.appendChild(el('span', {}, f.domain + ' ' + f.check + ': '));
      li.appendChild(el('span', { 'data-problem': '' }, f.problem));
      f.records.forEach(function (r) { li.appendChild(el('div', {}, '')).appendChild(el('code', {}, r)); });
      return li;
    }));
    fill('services', st.services.map(function (s) {
      return row([el('td', {}, s.service), el('td', {}, s.command), el('td', {}, s.user),
        el('td', { 'class': 'n', 'data-pid': s.service + '/' + s.command }, s.pid === null ? '-' : s.pid),
        el('td', { 'class': s.running ? 'ok' : 'error' }, s.running ? 'running' : 'down'), el('td', { 'class': 'n' }, uptime(s.uptime_seconds))]);
    }));
    document.body.setAttribute('data-rendered', st.generated_at);
  }
  function chart(flow) {
    var W = 600, H = 160, P = 24, max = 1;
    flow.forEach(function (m) { KINDS.forEach(function (k) { if (m.counts[k] > max) max = m.counts[k]; }); });
    var box = document.getElementById('chart');
    while (box.firstChild) box.removeChild(box.firstChild);
    var s = svg('svg', { width: W, height: H, viewBox: '0 0 ' + W + ' ' + H, role: 'img', 'aria-label': 'messages per minute, last hour' });
    s.appendChild(svg('line', { x1: P, y1: H - P, x2: W - 4, y2: H - P, stroke: '#999' }));
    s.appendChild(svg('line', { x1: P, y1: 6, x2: P, y2: H - P, stroke: '#999' }));
    var t = svg('text', { x: 2, y: 14, 'font-size': 10, fill: '#555' }); t.textContent = String(max); s.appendChild(t);
    var b = svg('text', { x: P, y: H - 8, 'font-size': 10, fill: '#555' }); b.textContent = '-60 min'; s.appendChild(b);
    var e2 = svg('text', { x: W - 40, y: H - 8, 'font-size': 10, fill: '#555' }); e2.textContent = 'now'; s.appendChild(e2);
    var step = (W - P - 8) / Math.max(1, flow.length - 1);
    KINDS.forEach(function (k) {
      var pts = flow.map(function (m, i) { return (P + i * step).toFixed(1) + ',' + (H - P - (m.counts[k] / max) * (H - P - 10)).toFixed(1); });
      s.appendChild(svg('polyline', { points: pts.join(' '), fill: 'none', stroke: COLORS[k], 'stroke-width': 1.5, 'data-series': k }));
    });
    box.appendChild(s);
    fill('legend', KINDS.map(function (k) {
      var sum = flow.reduce(function (a, m) { return a + m.counts[k]; }, 0);
      var sp = el('span'); var i = el('i'); i.style.background = COLORS[k]; sp.appendChild(i);
      sp.appendChild(el('span', {}, k + ' '));
      sp.appendChild(el('b', { 'data-figure': 'flow.' + k }, sum));
      return sp;
    }));
  }
  render(JSON.parse(document.getElementById('data').textContent));
  setInterval(function () {
    fetch('status.json', { cache: 'no-store' }).then(function (r) { return r.json(); }).then(render).catch(function () {});
  }, 15000);
})();
`;

const sha256 = (s: string) => `'sha256-${createHash('sha256').update(s).digest('base64')}'`;

/** Only the page's own script and style run; data comes from this origin only. */
export const CONTENT_SECURITY_POLICY = [
  "default-src 'none'", `script-src ${sha256(SCRIPT)}`, `style-src ${sha256(STYLE)}`,
  "connect-src 'self'", "img-src 'none'", "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'",
].join('; ');

/** JSON inside <script type="application/json">: `<` escaped so no text can close the element. */
function embedJson(data: unknown): string {
  return JSON.stringify(data).replace(/</g, '\\u003c').replace(/\u2028/g, '\\u2028').replace(/\u2029/g, '\\u2029');
}

export function statusPage(status: unknown): string {
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Postern status</title>
<meta name="viewport" content="width=device-width,initial-scale=1">
<style>${STYLE}</style></head>
<body>
<h1>Postern on <span id="hostname"></span></h1>
<div class="muted">figures of <a href="status.json">status.json</a> at <span id="generated"></span>; Prometheus metrics at <a href="metrics">/metrics</a></div>
<h2>Queues</h2><table><tbody id="queues"></tbody></table>
<h2>Last hour (messages per minute)</h2><div id="chart"></div><div class="legend" id="legend"></div>
<h2>Since the metrics service started</h2><table><tbody id="totals"></tbody></table>
<h2>DNS check</h2><div id="dns-state"></div><ul id="dns"></ul>
<h2>Services</h2><table><thead><tr><th>service</th><th>command</th><th>user</th><th>pid</th><th>state</th><th>uptime</th></tr></thead><tbody id="services"></tbody></table>
<script type="application/json" id="data">${embedJson(status)}</script>
<script>${SCRIPT}</script>
</body></html>
`;
}
