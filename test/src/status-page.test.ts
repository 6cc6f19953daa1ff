/**
 * The status page (issue 14, item 4) in a real headless browser (Debian
 * `chromium`): `/` on metrics_listen loads without a script error or a
 * Content-Security-Policy violation (chromium logs both as CONSOLE lines), its
 * script renders, and every figure on the rendered page (queues, totals, the
 * chart's per-kind sums, the DNS check's findings, the services' pids) equals
 * /status.json's.
 */
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Instance, freePort, requireTool, runAsync, tempDir, waitFor } from './harness.js';
import { TestDnsServer } from './dns-server.js';

const unescape = (s: string) => s.replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&quot;/g, '"').replace(/&nbsp;/g, '\u00a0').replace(/&amp;/g, '&');

describe('status page in headless chromium', () => {
  let dns: TestDnsServer;
  let inst: Instance;
  let base: string;
  let profile: string;

  const statusJson = async (): Promise<any> => (await fetch(`${base}/status.json`)).json();

  async function chromium(args: string[]): Promise<{ stdout: string; stderr: string; code: number }> {
    fs.rmSync(profile, { recursive: true, force: true });
    fs.mkdirSync(profile);
    return runAsync(requireTool('chromium'), ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync', `--user-data-dir=${profile}`,
      '--enable-logging=stderr', '--v=0', ...args], '', 90000);
  }

  before(async () => {
    requireTool('chromium');
    dns = await new TestDnsServer({ records: [
      { name: 'example.test', type: 'MX', value: { priority: 10, exchange: 'mx.example.test' } },
      { name: 'mx.example.test', type: 'A', value: '127.0.0.1' },
      { name: 'example.test', type: 'TXT', value: 'v=spf1 ip4:127.0.0.1 -all' },
      // nothing listens on 127.0.0.4: mail there is deferred
      { name: 'defer.test', type: 'MX', value: { priority: 10, exchange: 'mx.defer.test' } },
      { name: 'mx.defer.test', type: 'A', value: '127.0.0.4' },
    ] }).start();
    const port = await freePort();
    base = `http://127.0.0.1:${port}`;
    inst = await Instance.create({ users: [{ address: 'user@example.test' }],
      // a deferred message stays in deferred/ for the page to show (no retry within the test)
      main: { dns_servers: dns.address, dns_timeout: '2s', metrics_listen: `127.0.0.1:${port}`, minimal_backoff_time: '1h', maximal_backoff_time: '1h' } });
    profile = path.join(tempDir('chromium'), 'profile');
    await inst.start();
    // some figures that are not zero: one delivered, one rejected
    const swaks = requireTool('swaks');
    let r = await runAsync(swaks, ['--server', '127.0.0.1', '--port', String(inst.ports.smtp), '--from', 'a@elsewhere.test', '--to', 'user@example.test', '--timeout', '20']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    r = await runAsync(swaks, ['--server', '127.0.0.1', '--port', String(inst.ports.smtp), '--from', 'a@elsewhere.test', '--to', 'nobody@example.test', '--timeout', '20']);
    assert.match(r.stdout, /550 5\.1\.1/);
    await waitFor('delivery', () => inst.delivered('user@example.test')[0], 30000);
    // queues that are not empty: one message deferred, one file in corrupt/
    r = await runAsync(swaks, ['--server', '127.0.0.1', '--port', String(inst.ports.submission), '-tls', '--auth', 'PLAIN',
      '--auth-user', 'user@example.test', '--auth-password', 'secret', '--from', 'user@example.test', '--to', 'someone@defer.test', '--timeout', '20']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    await inst.waitForLog('the deferral', (e) => e.status === 'deferred' && e.to === '<someone@defer.test>', 30000);
    fs.writeFileSync(path.join(inst.spool, 'corrupt', '005E0BE10000000ABCDE'), 'not a queue file\n');
    await waitFor('the queues settled', async () => {
      const q = (await statusJson()).queue;
      const c = q.counts;
      return c.deferred === 1 && c.corrupt === 1 && c.active === 0 && c.incoming === 0 && q.oldest_age_seconds >= 1;
    }, 30000, 250);
    await waitFor('the delivery counted', async () => (await statusJson()).totals.delivered === 1, 15000, 250);
    await waitFor('the DNS check done', async () => (await statusJson()).dns.state === 'done', 60000, 500);
  });

  after(async () => {
    await inst?.destroy();
    await dns?.close();
    if (profile) fs.rmSync(path.dirname(profile), { recursive: true, force: true });
  });

  it('loads without script errors and shows the figures of /status.json', async () => {
    const before = await statusJson();
    const r = await chromium(['--dump-dom', `${base}/`]);
    const after = await statusJson();
    assert.equal(r.code, 0, r.stderr.slice(-2000));
    const dom = r.stdout;
    // chromium reports uncaught errors, console output and CSP refusals as CONSOLE lines
    const consoleLines = r.stderr.split('\n').filter((l) => /CONSOLE|Refused to|Uncaught/.test(l));
    assert.deepEqual(consoleLines, [], 'no script error, no console message, no CSP violation');
    assert.match(dom, /<body[^>]* data-rendered="[^"]+"/, 'the page\'s script ran to its end');

    const figures = new Map<string, string>();
    for (const m of dom.matchAll(/data-figure="([^"]+)"[^>]*>([^<]*)</g)) figures.set(m[1], unescape(m[2]));
    // the figures that do not move while the instance is idle: equal in both snapshots and on the page
    const expected: Record<string, string> = {};
    for (const [q, n] of Object.entries(after.queue.counts)) expected[`queue.${q}`] = String(n);
    for (const [k, n] of Object.entries(after.totals)) expected[`totals.${k}`] = String(n);
    for (const k of ['received', 'delivered', 'deferred', 'bounced', 'rejected']) {
      expected[`flow.${k}`] = String(after.flow.reduce((a: number, m: any) => a + m.counts[k], 0));
    }
    assert.deepEqual(before.totals, after.totals, 'idle: the totals did not move during the page load');
    const shown = Object.fromEntries(Object.keys(expected).map((k) => [k, figures.get(k)]));
    assert.deepEqual(shown, expected);
    assert.equal(expected['queue.deferred'], '1');
    assert.equal(expected['queue.corrupt'], '1');
    assert.equal(expected['totals.delivered'], '1');
    assert.equal(expected['totals.rejected'], '1');
    assert.equal(expected['totals.deferred'], '1');
    assert.equal(expected['flow.received'], '2');
    assert.equal(expected['flow.deferred'], '1');
    // the oldest message's age grows while the page loads: between the two snapshots
    const age = Number(figures.get('queue.oldest_age_seconds'));
    assert.ok(before.queue.oldest_age_seconds > 0 && age >= before.queue.oldest_age_seconds && age <= after.queue.oldest_age_seconds,
      `${before.queue.oldest_age_seconds} <= ${figures.get('queue.oldest_age_seconds')} <= ${after.queue.oldest_age_seconds}`);
    assert.ok(figures.get('dns.state')?.startsWith(`done at ${after.dns.checked_at}`), figures.get('dns.state'));

    // the DNS check's findings, each with its problem text and the records to publish
    const findings = [...dom.matchAll(/<li class="(\w+)" data-finding="([^"]+)">([\s\S]*?)<\/li>/g)].map((m) => ({
      level: m[1], check: m[2], problem: unescape(/data-problem="">([^<]*)</.exec(m[3])?.[1] ?? ''),
      records: [...m[3].matchAll(/<code>([^<]*)<\/code>/g)].map((c) => unescape(c[1])),
    }));
    assert.deepEqual(findings, after.dns.findings.map((f: any) => ({ level: f.level, check: f.check, problem: f.problem, records: f.records })));
    assert.ok(findings.some((f) => f.check === 'dmarc' && f.records[0] === '_dmarc.example.test. IN TXT "v=DMARC1; p=none; rua=mailto:postmaster@example.test"'),
      JSON.stringify(findings));
    assert.ok(findings.some((f) => f.check === 'mx' && f.level === 'ok'), JSON.stringify(findings));
    assert.ok(findings.some((f) => f.check === 'dmarc' && f.level === 'error'), JSON.stringify(findings));

    // services and their pids, as master's status says
    const pids = Object.fromEntries([...dom.matchAll(/data-pid="([^"]+)"[^>]*>([^<]*)</g)].map((m) => [unescape(m[1]), m[2]]));
    const status = inst.status();
    const want = Object.fromEntries(status.services.map((s: any) => [`${s.service}/${s.command}`, String(s.pid)]));
    assert.deepEqual(pids, want);
    assert.ok(want['metrics/metrics'], 'the metrics service itself is listed');
    // and their uptimes: between the two snapshots' (the page shows "[Nd ][Nh ]Nm Ns")
    const uptimes = Object.fromEntries([...dom.matchAll(/data-pid="([^"]+)"[^>]*>[^<]*<\/td><td class="ok">running<\/td><td class="n">([^<]*)</g)]
      .map((m) => { const u = /^(?:(\d+)d )?(?:(\d+)h )?(\d+)m (\d+)s$/.exec(m[2]); return [unescape(m[1]), u ? ((+(u[1] ?? 0) * 24 + +(u[2] ?? 0)) * 60 + +u[3]) * 60 + +u[4] : m[2]]; }));
    assert.deepEqual(Object.keys(uptimes).sort(), Object.keys(want).sort(), 'every service running, with an uptime');
    for (const s of after.services) {
      const b = before.services.find((x: any) => x.service === s.service && x.command === s.command);
      const shownUp = uptimes[`${s.service}/${s.command}`];
      assert.ok(typeof shownUp === 'number' && shownUp >= b.uptime_seconds && shownUp <= s.uptime_seconds,
        `${s.service}/${s.command}: ${b.uptime_seconds} <= ${shownUp} <= ${s.uptime_seconds}`);
    }
    // the chart: one line per kind
    assert.equal([...dom.matchAll(/<polyline [^>]*data-series="/g)].length, 5);
  });

  it('is read only, with a Content-Security-Policy, and serves Prometheus text on /metrics', async () => {
    const page = await fetch(`${base}/`);
    assert.match(page.headers.get('content-security-policy') ?? '', /default-src 'none'; script-src 'sha256-/);
    assert.equal((await fetch(`${base}/`, { method: 'POST', body: 'x' })).status, 405);
    assert.equal((await fetch(`${base}/nothing-here`)).status, 404);
    const m = await fetch(`${base}/metrics`);
    assert.equal(m.headers.get('content-type'), 'text/plain; version=0.0.4; charset=utf-8');
    // local delivery goes qmgr -> local in one hop (issue 10): counted under transport="local"
    assert.match(await m.text(), /^postern_recipients_delivered_total\{transport="local"\} 1$/m);
  });

  it('a screenshot renders (for the operator\'s eyes; the figures are checked above)', async () => {
    const shot = path.join(path.dirname(profile), 'status.png');
    const r = await chromium(['--hide-scrollbars', '--window-size=900,1300', `--screenshot=${shot}`, `${base}/`]);
    assert.equal(r.code, 0, r.stderr.slice(-2000));
    const png = fs.readFileSync(shot);
    assert.equal(png.subarray(1, 4).toString('latin1'), 'PNG');
    assert.ok(png.length > 10000, `a page, not a blank image: ${png.length} bytes`);
    if (process.env.POSTERN_KEEP_SCREENSHOT) fs.copyFileSync(shot, process.env.POSTERN_KEEP_SCREENSHOT);
  });
});
