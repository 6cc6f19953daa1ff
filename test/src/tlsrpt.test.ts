/**
 * TLS-RPT (issue 13 item 3, RFC 8460): the MTA-STS fixtures (a test CA, an
 * HTTPS server on loopback for the policies, STARTTLS receivers with a
 * certificate from the CA or self-signed, the test DNS server) plus
 * `_smtp._tls` TXT records whose rua is a mailbox of the instance (mailto:) or
 * the same HTTPS server (https:). Deliveries are recorded per policy domain;
 * `postern tlsrpt list` shows the counts, `postern tlsrpt send` mails and posts
 * the reports, which must parse as RFC 8460 JSON with those counts.
 */
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as https from 'node:https';
import * as zlib from 'node:zlib';
import { simpleParser } from 'mailparser';
import { SMTPServer } from 'smtp-server';
import { Instance, waitFor, freePort, IS_ROOT, run, runAsync, submitAs, POSTERN } from './harness.js';
import { TestDnsServer } from './dns-server.js';
import { TestCa, TlsSink, selfSigned } from './tls-fixtures.js';

const SENDER = 'alice@a.test';
const PASS = 'alice-secret';
const RUA_BOX = 'tlsrpt@a.test';

const POLICIES: Record<string, string> = {
  'good.test': 'version: STSv1\nmode: enforce\nmx: mx.good.test\nmax_age: 86400\n',
  'bad.test': 'version: STSv1\nmode: enforce\nmx: *.bad.test\nmax_age: 86400\n',
};

describe('TLS-RPT (RFC 8460)', () => {
  let dns: TestDnsServer;
  let a: Instance;
  let web: https.Server;
  let verified: TlsSink, self: TlsSink;
  /** A receiver that offers no STARTTLS. */
  let plaintext: SMTPServer;
  let httpsPort: number;
  /** POSTs the HTTPS server got for /tlsrpt, and how many it is to refuse (503) first. */
  const posts: { type: string; body: Buffer; status: number }[] = [];
  let refusePosts = 1;

  before(async () => {
    const port = await freePort('127.0.0.51');
    httpsPort = await freePort('127.0.0.50');
    const ca = new TestCa();
    const cert = ca.issue([...Object.keys(POLICIES).map((d) => `mta-sts.${d}`), 'reports.bad.test']);
    web = https.createServer({ key: cert.key, cert: cert.cert }, (req, res) => {
      const host = String(req.headers.host).replace(/:\d+$/, '');
      if (req.method === 'POST' && host === 'reports.bad.test' && req.url === '/tlsrpt') {
        const chunks: Buffer[] = [];
        req.on('data', (c: Buffer) => chunks.push(c));
        req.on('end', () => {
          const status = refusePosts-- > 0 ? 503 : 200;
          posts.push({ type: String(req.headers['content-type']), body: Buffer.concat(chunks), status });
          res.writeHead(status); res.end();
        });
        return;
      }
      const domain = host.replace(/^mta-sts\./, '');
      if (req.url !== '/.well-known/mta-sts.txt' || !POLICIES[domain]) { res.writeHead(404); res.end(); return; }
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(POLICIES[domain]);
    });
    await new Promise<void>((r) => web.listen(httpsPort, '127.0.0.50', r));
    verified = await new TlsSink('127.0.0.51', port, ca.issue(['mx.good.test', 'mx2.bad.test', 'mx.plain.test'])).start();
    self = await new TlsSink('127.0.0.52', port, selfSigned('mx1.bad.test')).start();
    plaintext = new SMTPServer({ disabledCommands: ['AUTH', 'STARTTLS'], logger: false,
      onData: (stream: any, _s: any, cb: () => void) => { stream.resume(); stream.on('end', () => cb()); } } as any);
    await new Promise<void>((r) => plaintext.listen(port, '127.0.0.53', () => r()));
    const records: any[] = [];
    for (const d of Object.keys(POLICIES)) {
      records.push({ name: `_mta-sts.${d}`, type: 'TXT', value: 'v=STSv1; id=20261203', ttl: 1 });
      records.push({ name: `mta-sts.${d}`, type: 'A', value: '127.0.0.50' });
    }
    records.push(
      { name: 'good.test', type: 'MX', value: '10 mx.good.test' }, { name: 'mx.good.test', type: 'A', value: '127.0.0.51' },
      // bad.test: the first MX has a self-signed certificate (refused under enforce), the second a good one
      { name: 'bad.test', type: 'MX', value: '10 mx1.bad.test' }, { name: 'bad.test', type: 'MX', value: '20 mx2.bad.test' },
      { name: 'mx1.bad.test', type: 'A', value: '127.0.0.52' }, { name: 'mx2.bad.test', type: 'A', value: '127.0.0.51' },
      // plain.test: no MTA-STS, no DANE: opportunistic TLS (no-policy-found)
      { name: 'plain.test', type: 'MX', value: '10 mx.plain.test' }, { name: 'mx.plain.test', type: 'A', value: '127.0.0.51' },
      // notls.test: no policy, and its MX offers no STARTTLS (delivered in plaintext, reported as a failure)
      { name: 'notls.test', type: 'MX', value: '10 mx.notls.test' }, { name: 'mx.notls.test', type: 'A', value: '127.0.0.53' },
      { name: '_smtp._tls.notls.test', type: 'TXT', value: `v=TLSRPTv1; rua=mailto:${RUA_BOX}` },
      { name: '_smtp._tls.good.test', type: 'TXT', value: `v=TLSRPTv1; rua=mailto:${RUA_BOX}` },
      { name: '_smtp._tls.plain.test', type: 'TXT', value: `v=TLSRPTv1;rua=mailto:${RUA_BOX}` },
      { name: '_smtp._tls.bad.test', type: 'TXT', value: `v=TLSRPTv1; rua=https://reports.bad.test:${httpsPort}/tlsrpt` },
      { name: 'reports.bad.test', type: 'A', value: '127.0.0.50' },
    );
    dns = await new TestDnsServer({ records }).start();
    a = await Instance.create({ unprivileged: !IS_ROOT, domain: 'a.test', users: [{ address: SENDER, password: PASS }, { address: RUA_BOX }],
      main: { dns_servers: dns.address, smtp_port: String(port), smtp_tls_CAfile: ca.certFile, smtp_mta_sts_https_port: String(httpsPort),
        // every message its own session, so the counts are the messages' (an idle session reused is no new TLS attempt)
        smtp_connection_cache_time: '0s', tlsrpt_organization: 'Postern Test Org', tlsrpt_contact_info: 'tls-admin@a.test' } });
    await a.start();
  });
  after(async () => {
    if (a) { if (!process.env.KEEP) await a.destroy(); else { await a.stop(); console.log('kept', a.dir); } }
    await verified?.stop();
    await self?.stop();
    if (plaintext) await new Promise<void>((r) => plaintext.close(() => r()));
    if (web?.listening) await new Promise((r) => web.close(r));
    await dns?.close();
  });

  const deliver = async (to: string, subject: string) => {
    const id = await submitAs(a, SENDER, PASS, to, subject);
    await a.waitForLog(`${subject} sent`, (e) => e.queue_id === id && e.status === 'sent', 20000);
    return id;
  };
  // asynchronously: the DNS and HTTPS servers the command talks to run in this process
  const cli = (args: string[]) => runAsync(process.execPath, [POSTERN, '-c', a.etc, 'tlsrpt', ...args]);
  const list = async () => {
    const r = await cli(['list', '--json']);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout);
  };
  const counts = (p: any) => [p.summary['total-successful-session-count'], p.summary['total-failure-session-count']];

  it('records each session per policy domain; "tlsrpt list --json" shows successes and failures per policy and the rua', async () => {
    await deliver('r1@good.test', 'good one');
    await deliver('r2@good.test', 'good two');
    const bad1 = await deliver('r1@bad.test', 'bad one');
    await deliver('r2@bad.test', 'bad two');
    await deliver('r1@plain.test', 'plain one');
    await deliver('r1@notls.test', 'notls one');
    // the refused first MX of bad.test is in the log as MTA-STS refused it
    await a.waitForLog('mx1 refused', (e) => e.queue_id === bad1 && /MTA-STS policy for bad\.test \(enforce\): mx1\.bad\.test\[127\.0\.0\.52\]/.test(e.msg));
    const rows = await list();
    const by = (d: string) => rows.filter((r: any) => r.domain === d);
    assert.deepEqual(rows.map((r: any) => r.domain).sort(), ['bad.test', 'good.test', 'notls.test', 'plain.test']);
    const today = new Date().toISOString().slice(0, 10);
    for (const r of rows) { assert.equal(r.day, today); assert.equal(r.complete, false); }
    const [good] = by('good.test');
    assert.equal(good.policies.length, 1);
    assert.equal(good.policies[0].policy['policy-type'], 'sts');
    assert.deepEqual(good.policies[0].policy['mx-host'], ['mx.good.test']);
    assert.deepEqual(counts(good.policies[0]), [2, 0]);
    assert.deepEqual(good.rua, [`mailto:${RUA_BOX}`]);
    const [bad] = by('bad.test');
    assert.equal(bad.policies.length, 1);
    assert.deepEqual(counts(bad.policies[0]), [2, 2]);
    const [fd] = bad.policies[0]['failure-details'];
    assert.equal(fd['result-type'], 'certificate-not-trusted');
    assert.equal(fd['receiving-mx-hostname'], 'mx1.bad.test');
    assert.equal(fd['receiving-ip'], '127.0.0.52');
    assert.equal(fd['failed-session-count'], 2);
    assert.deepEqual(bad.rua, [`https://reports.bad.test:${httpsPort}/tlsrpt`]);
    const [plain] = by('plain.test');
    assert.equal(plain.policies[0].policy['policy-type'], 'no-policy-found');
    assert.deepEqual(counts(plain.policies[0]), [1, 0]);
    const [notls] = by('notls.test');
    assert.equal(notls.policies[0].policy['policy-type'], 'no-policy-found');
    assert.deepEqual(counts(notls.policies[0]), [0, 1]);
    assert.equal(notls.policies[0]['failure-details'][0]['result-type'], 'starttls-not-supported');
    assert.equal(notls.policies[0]['failure-details'][0]['receiving-ip'], '127.0.0.53');
    // the text table names the same
    const text = (await cli(['list'])).stdout;
    assert.match(text, /^bad\.test\s+\d{4}-\d{2}-\d{2}\*\s+sts\s+\*\.bad\.test\s+2\s+2\s+https:\/\/reports\.bad\.test:\d+\/tlsrpt$/m);
    const dir = fs.statSync(path.join(a.spool, 'tlsrpt'));
    assert.equal(dir.mode & 0o777, 0o700);
    if (IS_ROOT) {
      const relayUid = Number(run('id', ['-u', 'postern-relay']).stdout.trim());
      assert.equal(dir.uid, relayUid, 'tlsrpt/ belongs to relay_user');
      assert.equal(fs.statSync(path.join(a.spool, 'tlsrpt', today, 'bad.test.jsonl')).uid, relayUid, 'records are written by smtp (relay_user)');
    }
  });

  it('"tlsrpt send": the mailto: rua gets an RFC 8460 5.3 mail whose gzip attachment parses as the report with the right counts', async () => {
    const r = await cli(['send', '--json']);
    // the https: rua refuses its first POST (503): that report is kept, the command says so
    assert.equal(r.code, 1, r.stderr);
    const results = JSON.parse(r.stdout);
    const bad = results.find((x: any) => x.domain === 'bad.test');
    assert.deepEqual(bad.sent, []);
    assert.match(bad.failed[0].error, /HTTP 503/);
    const reports = await waitFor('three reports in the rua mailbox', () => (a.delivered(RUA_BOX).length >= 3 ? a.delivered(RUA_BOX) : null), 30000);
    assert.equal(reports.length, 3);
    const byDomain = new Map<string, any>();
    for (const f of reports) {
      const m = await simpleParser(fs.readFileSync(f));
      byDomain.set(String(m.headers.get('tls-report-domain')), { m, raw: fs.readFileSync(f, 'utf8') });
    }
    assert.deepEqual([...byDomain.keys()].sort(), ['good.test', 'notls.test', 'plain.test']);
    const { m, raw } = byDomain.get('good.test');
    assert.match(raw, /^Content-Type: multipart\/report; report-type="tlsrpt";/m);
    assert.match(String(m.subject), /^Report Domain: good\.test Submitter: mx\.a\.test Report-ID: <[^>]+>$/);
    assert.equal(String(m.headers.get('tls-report-submitter')), 'mx.a.test');
    const att = m.attachments.find((x: any) => x.contentType === 'application/tlsrpt+gzip');
    assert.ok(att, 'an application/tlsrpt+gzip attachment');
    assert.match(att.filename, /^mx\.a\.test!good\.test!\d+!\d+!.+\.json\.gz$/);
    const json = JSON.parse(zlib.gunzipSync(att.content).toString('utf8'));
    assert.equal(json['organization-name'], 'Postern Test Org');
    assert.equal(json['contact-info'], 'tls-admin@a.test');
    assert.match(json['report-id'], /\S/);
    assert.ok(Date.parse(json['date-range']['start-datetime']) <= Date.parse(json['date-range']['end-datetime']));
    assert.equal(json.policies.length, 1);
    assert.deepEqual(json.policies[0].policy, { 'policy-type': 'sts', 'policy-domain': 'good.test', 'mx-host': ['mx.good.test'],
      'policy-string': ['version: STSv1', 'mode: enforce', 'mx: mx.good.test', 'max_age: 86400'] });
    assert.deepEqual(counts(json.policies[0]), [2, 0]);
    const plain = JSON.parse(zlib.gunzipSync(byDomain.get('plain.test').m.attachments[0].content).toString('utf8'));
    assert.equal(plain.policies[0].policy['policy-type'], 'no-policy-found');
    assert.deepEqual(counts(plain.policies[0]), [1, 0]);
    const notls = JSON.parse(zlib.gunzipSync(byDomain.get('notls.test').m.attachments[0].content).toString('utf8'));
    assert.deepEqual(counts(notls.policies[0]), [0, 1]);
    assert.equal(notls.policies[0]['failure-details'][0]['result-type'], 'starttls-not-supported');
    // sent once: only the report the https: rua refused is still pending
    assert.deepEqual((await list()).map((x: any) => x.domain), ['bad.test']);
  });

  it('the https: rua refused once gets the report at the next send, gzipped RFC 8460 JSON with the failures; then nothing is pending', async () => {
    const before = posts.length;
    const r = await cli(['send', '--json']);
    assert.equal(r.code, 0, r.stderr + r.stdout);
    assert.equal(posts.length, before + 1);
    const post = posts[posts.length - 1];
    assert.equal(post.status, 200);
    assert.equal(post.type, 'application/tlsrpt+gzip');
    const json = JSON.parse(zlib.gunzipSync(post.body).toString('utf8'));
    assert.equal(json.policies.length, 1);
    assert.equal(json.policies[0].policy['policy-domain'], 'bad.test');
    assert.deepEqual(counts(json.policies[0]), [2, 2]);
    assert.deepEqual(json.policies[0]['failure-details'].map((f: any) => [f['result-type'], f['receiving-mx-hostname'], f['failed-session-count']]),
      [['certificate-not-trusted', 'mx1.bad.test', 2]]);
    assert.deepEqual(await list(), []);
    // a session after the report starts the next one: only it is counted
    await deliver('r3@good.test', 'good three');
    const rows = await list();
    assert.equal(rows.length, 1);
    assert.deepEqual(counts(rows[0].policies[0]), [1, 0]);
  });

  it('a finished UTC day is reported for the whole day (00:00:00Z to 23:59:59Z), and a cut last line is not counted', async () => {
    const day = new Date(Date.now() - 86400 * 1000).toISOString().slice(0, 10);
    const dir = path.join(a.spool, 'tlsrpt', day);
    fs.mkdirSync(dir, { mode: 0o700 });
    const rec = (result: string) => JSON.stringify({ t: Date.parse(`${day}T12:00:00Z`), policy: { type: 'no-policy-found' }, result, mx: 'mx.bad.test', ip: '127.0.0.9',
      ...(result === 'success' ? {} : { reason: 'STARTTLS was not done' }) });
    // as smtp would leave it after a kill -9 in the middle of a line
    fs.writeFileSync(path.join(dir, 'bad.test.jsonl'), `${rec('success')}\n${rec('starttls-not-supported')}\n${rec('success')}\n${rec('success').slice(0, 30)}`);
    if (IS_ROOT) {
      const relay = Number(run('id', ['-u', 'postern-relay']).stdout.trim());
      for (const p of [dir, path.join(dir, 'bad.test.jsonl')]) fs.chownSync(p, relay, relay);
    }
    const [row] = (await list()).filter((x: any) => x.day === day);
    assert.equal(row.complete, true);
    assert.equal(row.start, `${day}T00:00:00Z`);
    assert.equal(row.end, `${day}T23:59:59Z`);
    assert.deepEqual(counts(row.policies[0]), [2, 1]);
    const before = posts.length;
    const r = await cli(['send', '--json']);
    assert.equal(r.code, 0, r.stderr + r.stdout);
    const json = JSON.parse(zlib.gunzipSync(posts[before].body).toString('utf8'));
    assert.deepEqual(json['date-range'], { 'start-datetime': `${day}T00:00:00Z`, 'end-datetime': `${day}T23:59:59Z` });
    assert.deepEqual(counts(json.policies[0]), [2, 1]);
    assert.equal(json.policies[0]['failure-details'][0]['result-type'], 'starttls-not-supported');
  });
});
