/**
 * Prometheus metrics (issue 14, item 1): instance A with metrics_listen on a
 * free loopback port, scraped every second by a real Prometheus (Debian
 * `prometheus`) on loopback. A known mix of mail goes through A: delivered
 * locally, rejected (unknown user, relay, too large), an AUTH failure on submission,
 * submitted mail relayed over STARTTLS to instance B (delivered, and bounced by
 * B), and one message deferred while B is down and then held. Prometheus's
 * numbers must be exactly those of the mix; after smtpd is killed (master
 * restarts it) they are unchanged. A runs under the real service accounts when
 * the test runs as root (the metrics service as the queue owner, its feed
 * socket root's).
 */
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn, ChildProcess } from 'node:child_process';
import { Instance, IS_ROOT, freePort, requireTool, run, runAsync, tempDir, waitFor, RunResult } from './harness.js';
import * as net from 'node:net';
import { TestDnsServer } from './dns-server.js';
import { MetricsFeed } from '../../packages/master/dist/metrics-feed.js';
import { Collector, feedReader } from '../../packages/metrics/dist/collector.js';
import { QueueScanner } from '../../packages/metrics/dist/queue-scan.js';
import { Spool } from '../../packages/common/dist/index.js';

const PW = 'pw-alice';

describe('metrics: Prometheus scrapes the counters of a known mix of mail', () => {
  let dns: TestDnsServer;
  let a: Instance;
  let b: Instance;
  let prom: ChildProcess | undefined;
  let promDir: string;
  let promUrl: string;
  let metricsPort: number;
  let promLog = '';

  const swaks = (port: number, args: string[]): Promise<RunResult> =>
    runAsync(requireTool('swaks'), ['--server', '127.0.0.1', '--port', String(port), '--helo', 'client.a.test', '--timeout', '20', ...args]);
  const submit = (to: string, extra: string[] = []) => swaks(a.ports.submission, ['-tls', '--auth', 'PLAIN', '--auth-user', 'alice@a.test',
    '--auth-password', PW, '--from', 'alice@a.test', '--to', to, ...extra]);

  /** The master.cf name of the smtpd listener on a port (`127.0.0.1:N` in a sandbox, `N` as root). */
  const listenerOf = (port: number): string =>
    a.status().services.find((x: any) => x.command === 'smtpd' && (x.service === String(port) || x.service.endsWith(`:${port}`))).service;

  /** One instant query; null when the series is absent. */
  async function query(q: string): Promise<{ value: number; ts: number } | null> {
    const res = await fetch(`${promUrl}/api/v1/query?query=${encodeURIComponent(q)}`);
    const body: any = await res.json();
    if (body.status !== 'success') throw new Error(`prometheus: ${JSON.stringify(body).slice(0, 300)}`);
    const r = body.data.result;
    if (!r.length) return null;
    assert.equal(r.length, 1, `one series for ${q}: ${JSON.stringify(r)}`);
    return { value: Number(r[0].value[1]), ts: Number(r[0].value[0]) };
  }

  /** Waits (bounded) until Prometheus shows every expected value; the assertion names those that differ. */
  async function expectValues(expected: Record<string, number>, timeoutMs = 30000): Promise<void> {
    let last: Record<string, number | null> = {};
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      last = {};
      for (const q of Object.keys(expected)) last[q] = (await query(q))?.value ?? null;
      if (Object.keys(expected).every((q) => last[q] === expected[q])) return;
      await new Promise((r) => setTimeout(r, 500));
    }
    assert.deepEqual(last, expected, 'Prometheus shows the numbers of the mail sent');
  }

  before(async () => {
    requireTool('swaks');
    const prometheus = requireTool('prometheus');
    dns = await new TestDnsServer({ records: [
      { name: 'b.test', type: 'MX', value: { priority: 10, exchange: 'mx.b.test' } },
      { name: 'mx.b.test', type: 'A', value: '127.0.0.1' },
      { name: '127.0.0.1', type: 'PTR', value: 'mx.a.test' },
      { name: 'mx.a.test', type: 'A', value: '127.0.0.1' },
    ] }).start();
    b = await Instance.create({ domain: 'b.test', users: [{ address: 'bob@b.test' }],
      main: { dns_servers: dns.address, mynetworks: '10.255.0.0/16', smtpd_message_auth: 'no' } });
    await b.start();
    metricsPort = await freePort();
    a = await Instance.create({ unprivileged: !IS_ROOT, domain: 'a.test', users: [{ address: 'alice@a.test', password: PW }],
      // loopback is outside mynetworks: the test's own connections are strangers, as on the internet
      main: { dns_servers: dns.address, dns_timeout: '2s', mynetworks: '10.255.0.0/16', smtpd_message_auth: 'no',
        smtp_port: String(b.ports.smtp), metrics_listen: `127.0.0.1:${metricsPort}`,
        // a deferred message stays in deferred/ (no retry within the test), so the gauges can be seen
        minimal_backoff_time: '1h', maximal_backoff_time: '1h', message_size_limit: '100000' } });
    a.cli(['dkim', 'keygen', 'a.test', '--selector', 'sel1']);
    await a.start();

    promDir = tempDir('prometheus');
    const promPort = await freePort();
    promUrl = `http://127.0.0.1:${promPort}`;
    fs.writeFileSync(path.join(promDir, 'prometheus.yml'), [
      'global:', '  scrape_interval: 1s', '  evaluation_interval: 1s',
      'scrape_configs:', '  - job_name: postern', '    scrape_interval: 1s', '    scrape_timeout: 1s',
      '    static_configs:', `      - targets: ['127.0.0.1:${metricsPort}']`, '',
    ].join('\n'));
    prom = spawn(prometheus, [`--config.file=${path.join(promDir, 'prometheus.yml')}`, `--storage.tsdb.path=${path.join(promDir, 'data')}`,
      `--web.listen-address=127.0.0.1:${promPort}`, '--log.level=warn'],
    { stdio: ['ignore', 'ignore', 'pipe'], cwd: promDir });
    prom.stderr!.on('data', (d) => { promLog = (promLog + d).slice(-4000); });
    await waitFor('Prometheus ready', async () => (await fetch(`${promUrl}/-/ready`)).ok, 30000, 250);
    await waitFor('the first scrape of A', async () => (await query('up{job="postern"}'))?.value === 1, 30000, 250);
  });

  after(async () => {
    if (prom && prom.exitCode === null) {
      prom.kill('SIGTERM');
      await new Promise<void>((r) => { const t = setTimeout(() => { prom!.kill('SIGKILL'); r(); }, 10000); prom!.once('exit', () => { clearTimeout(t); r(); }); });
    }
    await a?.destroy();
    await b?.destroy();
    await dns?.close();
    if (promDir) fs.rmSync(promDir, { recursive: true, force: true });
  });

  it('counts connections, received, rejected by reason, delivered and bounced by transport, TLS, DKIM and AUTH failures', async () => {
    const smtp = listenerOf(a.ports.smtp);
    const sub = listenerOf(a.ports.submission);
    // from outside, on port 25: one delivered, one unknown user, one relay attempt
    let r = await swaks(a.ports.smtp, ['--from', 'someone@elsewhere.test', '--to', 'alice@a.test']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    r = await swaks(a.ports.smtp, ['--from', 'someone@elsewhere.test', '--to', 'nobody@a.test']);
    assert.match(r.stdout, /<\*\* 550 5\.1\.1/);
    r = await swaks(a.ports.smtp, ['--from', 'someone@elsewhere.test', '--to', 'victim@elsewhere.test']);
    assert.match(r.stdout, /<\*\* 554 5\.7\.1 .*Relay access denied/);
    // too large, found in the data: a check, not a restriction, named by its parameter. (A SIZE= over the limit at
    // MAIL is refused by smtp-server before smtpd sees the command, so it is not logged or counted, as in Postfix.)
    const big = path.join(promDir, 'big.txt');
    fs.writeFileSync(big, 'x'.repeat(76).concat('\r\n').repeat(2000));
    r = await swaks(a.ports.smtp, ['--from', 'someone@elsewhere.test', '--to', 'alice@a.test', '--body', big]);
    assert.match(r.stdout, /<\*\* 552 5\.3\.4/);
    // a wrong password on submission (after STARTTLS)
    r = await swaks(a.ports.submission, ['-tls', '--auth', 'PLAIN', '--auth-user', 'alice@a.test', '--auth-password', 'wrong',
      '--from', 'alice@a.test', '--to', 'bob@b.test']);
    assert.match(r.stdout, /535 5\.7\.8/);
    // submitted, signed, relayed to B over STARTTLS: one delivered, one bounced by B (unknown user)
    r = await submit('bob@b.test');
    assert.equal(r.code, 0, r.stdout + r.stderr);
    await waitFor('delivery in B', () => b.delivered('bob@b.test')[0], 30000);
    r = await submit('nobody@b.test');
    assert.equal(r.code, 0, r.stdout + r.stderr);
    // the bounce comes back to alice, delivered by local
    await waitFor('the bounce in alice\'s Maildir', () => a.delivered('alice@a.test').length === 2, 30000);
    await waitFor('A\'s queue empty', () => a.queueEmpty(), 30000);
    // the delivery lines reach the log through master after the mailbox and the queue are done
    const sentDelays = () => a.logs().filter((e) => e.status === 'sent' && typeof e.delay === 'number').map((e) => e.delay as number);
    await waitFor('three delivery lines in A\'s log', () => sentDelays().length === 3, 15000);
    const delays = sentDelays();
    assert.ok(delays.some((d) => d > 0), JSON.stringify(delays));

    await expectValues({
      [`postern_smtpd_connections_total{listener="${smtp}"}`]: 4,
      [`postern_smtpd_connections_total{listener="${sub}"}`]: 3,
      // from outside, two submitted, the bounce
      'postern_messages_received_total': 4,
      'postern_messages_rejected_total{reason="reject_unlisted_recipient"}': 1,
      'postern_messages_rejected_total{reason="reject_unauth_destination"}': 1,
      'postern_messages_rejected_total{reason="message_size_limit"}': 1,
      'sum(postern_messages_rejected_total)': 3,
      // local mailboxes: qmgr asks local directly (issue 10), so local's lines count
      'postern_recipients_delivered_total{transport="local"}': 2,
      'postern_recipients_delivered_total{transport="smtp"}': 1,
      'postern_recipients_bounced_total{transport="smtp"}': 1,
      'postern_tls_total{direction="in"}': 3,
      'postern_tls_total{direction="out"}': 2,
      'postern_dkim_signed_total': 2,
      [`postern_smtpd_auth_failures_total{listener="${sub}"}`]: 1,
      'postern_delivery_delay_seconds_count': 3,
      'postern_delivery_delay_seconds_bucket{le="+Inf"}': 3,
      // the histogram holds the delays the delivery agents logged
      'postern_delivery_delay_seconds_bucket{le="0.1"}': delays.filter((d) => d <= 0.1).length,
      'postern_delivery_delay_seconds_bucket{le="5"}': delays.filter((d) => d <= 5).length,
      'postern_delivery_delay_seconds_sum': Math.round(delays.reduce((x, d) => x + d, 0) * 1000) / 1000,
      'sum(postern_queue_messages)': 0,
      'postern_metrics_events_dropped_total': 0,
      'sum(postern_metrics_events_total{outcome="bad"}) or vector(0)': 0,
    });
  });

  it('the metrics service runs as the queue owner; only root can write its feed socket', () => {
    const svc = a.status().services.find((s: any) => s.command === 'metrics');
    assert.ok(svc?.running, JSON.stringify(a.status()));
    // the HTTP listener is the metrics process's socket, not master's (master's root process serves nothing)
    const hexPort = metricsPort.toString(16).toUpperCase().padStart(4, '0');
    const row = fs.readFileSync('/proc/net/tcp', 'utf8').split('\n').map((l) => l.trim().split(/\s+/))
      .find((f) => f[1] === `0100007F:${hexPort}` && f[3] === '0A');
    assert.ok(row, `a listening socket on 127.0.0.1:${metricsPort}`);
    const socketsOf = (pid: number) => fs.readdirSync(`/proc/${pid}/fd`).map((fd) => { try { return fs.readlinkSync(`/proc/${pid}/fd/${fd}`); } catch { return ''; } });
    assert.ok(socketsOf(svc.pid).includes(`socket:[${row[9]}]`), 'the metrics service holds the listener');
    assert.equal(socketsOf(a.status().master.pid).includes(`socket:[${row[9]}]`), false, 'master does not');
    const st = fs.statSync(path.join(a.spool, 'private', 'metrics'));
    assert.ok(st.isSocket());
    assert.equal(st.mode & 0o777, 0o600);
    if (IS_ROOT) {
      assert.equal(svc.user, 'postern');
      const uid = run('id', ['-u', 'postern']).stdout.trim();
      assert.match(uid, /^[1-9]\d*$/);
      assert.equal(fs.readFileSync(`/proc/${svc.pid}/status`, 'utf8').match(/^Uid:\s+(\d+)/m)?.[1], uid);
      assert.equal(st.uid, 0);
      assert.equal(st.gid, 0);
    }
  });

  it('queue gauges: a message deferred while B is down, then held', async () => {
    await b.stop();
    const r = await submit('bob@b.test');
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const id = /queued as ([0-9A-F]{20})/.exec(r.stdout)?.[1];
    assert.ok(id, r.stdout);
    await a.waitForLog('the deferral', (e) => e.queue_id === id && e.status === 'deferred', 30000);
    // deferred, retried only in an hour
    await expectValues({
      'postern_queue_messages{queue="deferred"}': 1,
      'postern_queue_messages{queue="hold"}': 0,
      'postern_queue_messages{queue="active"}': 0,
      'postern_recipients_deferred_total{transport="smtp"}': 1,
    });
    a.cli(['queue', 'hold', id]);
    await waitFor('the message in hold/', () => a.queued('hold').some((f) => path.basename(f) === id), 15000);
    // a file qmgr could not read, moved aside; its id says 2020: it counts in corrupt but not in the oldest message's age
    const corruptFile = path.join(a.spool, 'corrupt', '005E0BE10000000ABCDE');
    fs.writeFileSync(corruptFile, 'not a queue file\n');
    await expectValues({
      'postern_queue_messages{queue="hold"}': 1,
      'postern_queue_messages{queue="incoming"}': 0,
      'postern_queue_messages{queue="active"}': 0,
      'postern_queue_messages{queue="deferred"}': 0,
      'postern_queue_messages{queue="corrupt"}': 1,
      'postern_recipients_deferred_total{transport="smtp"}': 1,
      'postern_messages_received_total': 5,
    });

    const age = await waitFor('the oldest message has an age', async () => {
      const v = (await query('postern_queue_oldest_message_age_seconds'))?.value ?? 0;
      return v >= 1 ? v : null;
    }, 15000, 500);
    assert.ok(age < 600, `the held message is young, the corrupt file from 2020 does not count: ${age}`);
    fs.rmSync(corruptFile);
  });

  it('counters are unchanged after smtpd is killed and restarted by master', async () => {
    const listener = listenerOf(a.ports.smtp);
    const names = [
      `postern_smtpd_connections_total{listener="${listener}"}`, 'postern_messages_received_total',
      'sum(postern_messages_rejected_total)', 'sum(postern_recipients_delivered_total)', 'sum(postern_recipients_deferred_total)',
      'sum(postern_recipients_bounced_total)', 'sum(postern_tls_total)', 'postern_dkim_signed_total',
      'sum(postern_smtpd_auth_failures_total)', 'postern_delivery_delay_seconds_count',
    ];
    const before: Record<string, number> = {};
    for (const n of names) before[n] = (await query(n))!.value;
    const old = a.status().services.find((s: any) => s.command === 'smtpd' && s.service === listener);
    assert.ok(old?.pid, JSON.stringify(a.status()));
    const killedAt = Date.now() / 1000;
    process.kill(old.pid, 'SIGKILL');
    const fresh = await waitFor('master restarts smtpd', () => {
      const s = a.status().services.find((x: any) => x.command === 'smtpd' && x.service === listener);
      return s && s.pid && s.pid !== old.pid && s.running ? s : null;
    }, 30000, 200);
    const restartedAt = Date.now() / 1000;
    // a scrape taken after the restart: the new smtpd's uptime is there and small
    await waitFor('a scrape after the restart', async () => {
      const t = await query(`timestamp(postern_service_uptime_seconds{command="smtpd",service="${listener}"})`);
      return t && t.value > restartedAt + 1;
    }, 30000, 250);
    // scrape time minus uptime is when the process it describes started: after the kill (a bound by cause, not a
    // clock race; uptime is in whole seconds)
    const sel = `postern_service_uptime_seconds{command="smtpd",service="${listener}"}`;
    const started = await query(`timestamp(${sel}) - ${sel}`);
    assert.ok(started && started.value >= killedAt - 1, `the new smtpd (pid ${fresh.pid}) started at ${started?.value}, killed at ${killedAt}`);
    const after: Record<string, number> = {};
    for (const n of names) after[n] = (await query(n))!.value;
    assert.deepEqual(after, before);
    assert.equal(promLog.includes('level=error'), false, promLog);
    // the scrape after the run, for docs/metrics.md
    if (process.env.POSTERN_KEEP_SCRAPE) fs.writeFileSync(process.env.POSTERN_KEEP_SCRAPE, await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text());
  });
});

describe('queue gauges from directory listings', () => {
  it('counts each queue (deferred/ through its hash directories), skips files being written, ages by queue id', async () => {
    const root = tempDir('gauge-spool');
    try {
      const id = (secondsAgo: number, tail: string) => Math.floor(Date.now() / 1000 - secondsAgo).toString(16).toUpperCase().padStart(10, '0') + '00000' + tail;
      const put = (rel: string) => { fs.mkdirSync(path.dirname(path.join(root, rel)), { recursive: true }); fs.writeFileSync(path.join(root, rel), ''); };
      put(`incoming/${id(30, 'AAAA1')}`);
      put('incoming/.tmp-being-written');
      put(`active/${id(20, 'AAAA2')}`);
      put(`active/${id(10, 'AAAA3')}`);
      put(`deferred/4/${id(3600, 'AAAA4')}`);
      put(`deferred/7/${id(50, 'AAAA7')}`);
      put(`deferred/E/${id(60, 'AAAAE')}`);
      put(`hold/${id(40, 'AAAA8')}`);
      put(`corrupt/${id(86400 * 30, 'AAAA9')}`);
      const snap = await new QueueScanner(new Spool(root)).snapshot();
      assert.deepEqual(snap.counts, { incoming: 1, active: 2, deferred: 3, hold: 1, corrupt: 1 });
      // the oldest is deferred/4's hour-old message, not the month-old corrupt file
      assert.ok(snap.oldest_age_seconds >= 3600 && snap.oldest_age_seconds < 3700, String(snap.oldest_age_seconds));
      assert.equal(snap.truncated, false);
    } finally {
      fs.rmSync(root, { recursive: true, force: true });
    }
  });
});

describe('master\'s feed to the metrics service', () => {
  it('never blocks master: while the service is down lines wait in a bounded queue, the rest are dropped and counted', async () => {
    const dir = tempDir('feed');
    const sock = path.join(dir, 'metrics');
    const feed = new MetricsFeed(sock, { lines: 100, bytes: 1 << 20, lineBytes: 1024, retryMs: 100 });
    const collector = new Collector();
    let server: net.Server | undefined;
    try {
      feed.start();
      // the service is down: 1000 events and one overlong line, pushed without waiting
      for (let i = 0; i < 1000; i++) feed.push(JSON.stringify({ service: 'cleanup', queue_id: `Q${i}`, msg: 'queued' }));
      feed.push(JSON.stringify({ service: 'cleanup', queue_id: 'QX', msg: 'queued', pad: 'x'.repeat(2000) }));
      // the service comes up on the socket: what was queued arrives, then the count of what was not
      server = net.createServer((conn) => conn.on('data', feedReader((rec) => collector.record(rec), () => collector.events.inc({ outcome: 'bad' }))));
      await new Promise<void>((r) => server!.listen(sock, r));
      await waitFor('the queued events and the drop count', () => collector.received.total() === 100 && collector.dropped.total() === 901, 15000);
      // connected: a new event goes straight through
      feed.push(JSON.stringify({ service: 'cleanup', queue_id: 'QY', msg: 'queued' }));
      await waitFor('the next event', () => collector.received.total() === 101, 15000);
      assert.equal(collector.dropped.total(), 901);
      assert.equal(collector.events.value({ outcome: 'bad' }), 0);
      assert.match(collector.registry.render(), /^postern_metrics_events_dropped_total 901$/m);
    } finally {
      feed.stop();
      server?.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('metrics_listen off (the default)', () => {
  it('no metrics process and no feed socket', async () => {
    const inst = await Instance.create({});
    try {
      assert.doesNotMatch(fs.readFileSync(path.join(inst.etc, 'main.cf'), 'utf8'), /^metrics_listen/m);
      // postern init writes the service line anyway: turning metrics on is one main.cf setting
      assert.match(fs.readFileSync(path.join(inst.etc, 'master.cf'), 'utf8'), /^metrics\s+unix\s/m);
      await inst.start();
      const st = inst.status();
      assert.ok(st.services.some((s: any) => s.command === 'qmgr' && s.running), JSON.stringify(st));
      assert.deepEqual(st.services.filter((s: any) => s.command === 'metrics'), []);
      assert.equal(fs.existsSync(path.join(inst.spool, 'private', 'metrics')), false);
    } finally {
      await inst.destroy();
    }
  });
});

describe('metrics_listen: a bad value is refused with its file and line', () => {
  it('postern check and postern start name main.cf\'s line; a master.cf without the service gets a warning', async () => {
    const inst = await Instance.create({ main: { metrics_listen: '9154' } });
    try {
      const line = fs.readFileSync(path.join(inst.etc, 'main.cf'), 'utf8').split('\n').findIndex((l) => l.startsWith('metrics_listen')) + 1;
      const problem = `metrics_listen: "9154" is not host:port (for example 127.0.0.1:9154)`;
      const check = inst.tryCli(['check']);
      assert.notEqual(check.code, 0);
      assert.ok((check.stdout + check.stderr).includes(`main.cf:${line}: error: ${problem}`), check.stdout + check.stderr);
      const start = inst.tryCli(['start']);
      assert.notEqual(start.code, 0);
      assert.ok(start.stderr.includes(`main.cf:${line}: ${problem}`), start.stderr);
      // a good value, but master.cf from before the metrics service
      inst.cli(['config', 'set', 'metrics_listen=127.0.0.1:9154']);
      const cf = path.join(inst.etc, 'master.cf');
      fs.writeFileSync(cf, fs.readFileSync(cf, 'utf8').split('\n').filter((l) => !/^metrics\s/.test(l)).join('\n'));
      const again = inst.tryCli(['check']);
      assert.match(again.stdout + again.stderr, /metrics_listen is set, but master.cf has no metrics service: add "metrics unix - 1 metrics"/);
    } finally {
      await inst.destroy();
    }
  });
});
