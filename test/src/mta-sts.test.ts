/**
 * MTA-STS (issue 13 item 1, RFC 8461): a test CA, an HTTPS policy server on
 * loopback at the address the test DNS gives for mta-sts.DOMAIN (port from
 * smtp_mta_sts_https_port), STARTTLS receivers with certificates from that CA
 * or self-signed, and smtp_tls_CAfile naming the CA.
 */
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as https from 'node:https';
import { Instance, waitFor, freePort, IS_ROOT, run, submitAs } from './harness.js';
import { TestDnsServer } from './dns-server.js';
import { TestCa, TlsSink, selfSigned } from './tls-fixtures.js';

const SENDER = 'alice@a.test';
const PASS = 'alice-secret';

const submit = (a: Instance, to: string, subject: string) => submitAs(a, SENDER, PASS, to, subject);

const POLICIES: Record<string, string> = {
  'sts.test': 'version: STSv1\nmode: enforce\nmx: mx.sts.test\nmax_age: 86400\n',
  'stsmx.test': 'version: STSv1\nmode: enforce\nmx: mx.stsmx.test\nmax_age: 86400\n',
  'stsself.test': 'version: STSv1\nmode: enforce\nmx: *.stsself.test\nmax_age: 86400\n',
  'ststesting.test': 'version: STSv1\nmode: testing\nmx: mx.ststesting.test\nmax_age: 86400\n',
};

describe('MTA-STS (RFC 8461)', () => {
  let dns: TestDnsServer;
  let a: Instance;
  let port: number;
  let policyServer: https.Server;
  const fetched: string[] = [];
  let verified: TlsSink, self: TlsSink;

  before(async () => {
    port = await freePort('127.0.0.51');
    const httpsPort = await freePort('127.0.0.50');
    const ca = new TestCa();
    const web = ca.issue(Object.keys(POLICIES).map((d) => `mta-sts.${d}`));
    policyServer = https.createServer({ key: web.key, cert: web.cert }, (req, res) => {
      const domain = String(req.headers.host).replace(/^mta-sts\./, '').replace(/:\d+$/, '');
      fetched.push(domain);
      if (req.url !== '/.well-known/mta-sts.txt' || !POLICIES[domain]) { res.writeHead(404); res.end(); return; }
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(POLICIES[domain]);
    });
    await new Promise<void>((r) => policyServer.listen(httpsPort, '127.0.0.50', r));
    // one receiver with a certificate from the CA naming every MX, one self-signed
    verified = await new TlsSink('127.0.0.51', port, ca.issue(['mx.sts.test', 'other.stsmx.test', 'mx.stsmx.test', 'mx.ststesting.test'])).start();
    self = await new TlsSink('127.0.0.52', port, selfSigned('mx.stsself.test')).start();
    const records: any[] = [];
    for (const d of Object.keys(POLICIES)) {
      records.push({ name: `_mta-sts.${d}`, type: 'TXT', value: 'v=STSv1; id=20260101', ttl: 1 });
      records.push({ name: `mta-sts.${d}`, type: 'A', value: '127.0.0.50' });
    }
    records.push(
      { name: 'sts.test', type: 'MX', value: '10 mx.sts.test', ttl: 1 }, { name: 'mx.sts.test', type: 'A', value: '127.0.0.51' },
      { name: 'other.sts.test', type: 'A', value: '127.0.0.51' },
      // the MX is not the one the policy names (its certificate is valid: only the policy refuses it)
      { name: 'stsmx.test', type: 'MX', value: '10 other.stsmx.test' }, { name: 'other.stsmx.test', type: 'A', value: '127.0.0.51' },
      { name: 'stsself.test', type: 'MX', value: '10 mx.stsself.test' }, { name: 'mx.stsself.test', type: 'A', value: '127.0.0.52' },
      // testing: the receiver's certificate does not verify, and delivery goes on
      { name: 'ststesting.test', type: 'MX', value: '10 mx.ststesting.test' }, { name: 'mx.ststesting.test', type: 'A', value: '127.0.0.52' },
    );
    dns = await new TestDnsServer({ records }).start();
    // as root: real service accounts, so the cache is written by smtp's own account (relay_user)
    a = await Instance.create({ unprivileged: !IS_ROOT, domain: 'a.test', users: [{ address: SENDER, password: PASS }],
      main: { dns_servers: dns.address, smtp_port: String(port), smtp_tls_CAfile: ca.certFile, smtp_mta_sts_https_port: String(httpsPort),
        smtp_dead_destination_time: '1s' } });
    await a.start();
  });
  after(async () => {
    if (a) { if (!process.env.KEEP) await a.destroy(); else { await a.stop(); console.log('kept', a.dir); } }
    await verified?.stop();
    await self?.stop();
    if (policyServer.listening) await new Promise((r) => policyServer.close(r));
    await dns?.close();
  });

  it('enforce, a listed MX with a certificate from a trusted CA: delivered over Verified TLS; the policy is cached on disk', async () => {
    const id = await submit(a, 'rcpt@sts.test', 'sts enforce');
    await waitFor('message at mx.sts.test', () => verified.got('sts enforce'), 20000);
    const line = await a.waitForLog('Verified TLS line', (e) => e.queue_id === id && /^Verified TLS connection established to mx\.sts\.test\[/.test(e.msg));
    assert.equal(line.tls_policy, 'mta-sts');
    assert.equal(line.verified, true);
    await a.waitForLog('policy fetched', (e) => e.queue_id === id && e.msg === 'MTA-STS policy fetched' && e.mode === 'enforce');
    assert.ok(fetched.includes('sts.test'));
    const cache = JSON.parse(fs.readFileSync(path.join(a.spool, 'mta-sts', 'sts.test.json'), 'utf8'));
    assert.equal(cache.mode, 'enforce');
    assert.deepEqual(cache.mx, ['mx.sts.test']);
    const dir = fs.statSync(path.join(a.spool, 'mta-sts'));
    assert.equal(dir.mode & 0o777, 0o700);
    if (IS_ROOT) {
      const relayUid = Number(run('id', ['-u', 'postern-relay']).stdout.trim());
      assert.equal(dir.uid, relayUid, 'mta-sts/ belongs to relay_user');
      assert.equal(fs.statSync(path.join(a.spool, 'mta-sts', 'sts.test.json')).uid, relayUid, 'the cache file is written by smtp (relay_user)');
    }
  });

  it('a cached policy past half its max_age is fetched again before it expires; one younger is not', async () => {
    const file = path.join(a.spool, 'mta-sts', 'sts.test.json');
    const fetchesBefore = fetched.filter((d) => d === 'sts.test').length;
    const young = await submit(a, 'rcpt@sts.test', 'sts young cache');
    await waitFor('message at mx.sts.test', () => verified.got('sts young cache'), 20000);
    assert.equal(fetched.filter((d) => d === 'sts.test').length, fetchesBefore, 'a young cached policy is used as it is');
    assert.ok(!a.logs().some((e) => e.queue_id === young && e.msg === 'MTA-STS policy fetched'));
    // age the cached policy to 0.6 of its max_age (86400 s): still valid, due for a refresh
    const cached = JSON.parse(fs.readFileSync(file, 'utf8'));
    cached.fetched = Date.now() - 0.6 * 86400 * 1000;
    fs.writeFileSync(file, JSON.stringify(cached));
    const id = await submit(a, 'rcpt@sts.test', 'sts refresh');
    await waitFor('message at mx.sts.test', () => verified.got('sts refresh'), 20000);
    await a.waitForLog('policy fetched again', (e) => e.queue_id === id && e.msg === 'MTA-STS policy fetched');
    assert.equal(fetched.filter((d) => d === 'sts.test').length, fetchesBefore + 1);
    assert.ok(JSON.parse(fs.readFileSync(file, 'utf8')).fetched > cached.fetched + 3600 * 1000, 'the cache holds the new fetch');
  });

  it('enforce, an MX not in the policy: deferred with the reason, nothing sent', async () => {
    const id = await submit(a, 'rcpt@stsmx.test', 'sts wrong mx');
    const line = await a.waitForLog('deferred', (e) => e.queue_id === id && e.status === 'deferred', 20000);
    assert.equal(line.dsn, '4.7.5');
    assert.match(line.msg, /MTA-STS policy for stsmx\.test \(enforce\): no MX host matches the policy \(MX other\.stsmx\.test; policy mx: mx\.stsmx\.test\)/);
    assert.equal(verified.got('sts wrong mx'), undefined);
    a.cli(['queue', 'delete', id]);
  });

  it('enforce, a receiver with a self-signed certificate: deferred, nothing sent', async () => {
    const id = await submit(a, 'rcpt@stsself.test', 'sts self signed');
    const line = await a.waitForLog('deferred', (e) => e.queue_id === id && e.status === 'deferred', 20000);
    assert.equal(line.dsn, '4.7.5');
    assert.match(line.msg, /MTA-STS policy for stsself\.test \(enforce\): TLS certificate of mx\.stsself\.test\[127\.0\.0\.52\]:\d+ not accepted: certificate does not verify/);
    assert.equal(self.got('sts self signed'), undefined);
    a.cli(['queue', 'delete', id]);
  });

  it('testing: a certificate that does not verify is recorded, and the mail is delivered', async () => {
    const id = await submit(a, 'rcpt@ststesting.test', 'sts testing');
    await waitFor('message at mx.ststesting.test', () => self.got('sts testing'), 20000);
    const rec = await a.waitForLog('testing failure recorded', (e) => e.queue_id === id && /^MTA-STS policy for ststesting\.test \(testing\): .*certificate does not verify: DEPTH_ZERO_SELF_SIGNED_CERT; delivering anyway/.test(e.msg));
    assert.equal(rec.tls_policy, 'mta-sts');
    await a.waitForLog('sent', (e) => e.queue_id === id && e.status === 'sent');
    const tlsLine = await a.waitForLog('TLS line', (e) => e.queue_id === id && /TLS connection established to mx\.ststesting\.test/.test(e.msg));
    assert.match(tlsLine.msg, /^Untrusted TLS/);
    assert.equal(tlsLine.verified, false);
  });

  it('the cached policy is used after the policy server is stopped (and across a restart)', async () => {
    await new Promise((r) => policyServer.close(r));
    await a.stop();
    // a new policy id makes smtp try to fetch again; the fetch fails; an MX outside the cached policy is then refused
    dns.remove('_mta-sts.sts.test', 'TXT');
    dns.add({ name: '_mta-sts.sts.test', type: 'TXT', value: 'v=STSv1; id=20260202', ttl: 1 });
    dns.remove('sts.test', 'MX');
    dns.add({ name: 'sts.test', type: 'MX', value: '10 other.sts.test', ttl: 1 });
    await a.start();
    const id = await submit(a, 'rcpt@sts.test', 'sts cached');
    await a.waitForLog('fetch failed', (e) => e.queue_id === id && e.msg === 'MTA-STS policy fetch failed; using the cached policy');
    const line = await a.waitForLog('deferred', (e) => e.queue_id === id && e.status === 'deferred', 20000);
    assert.match(line.msg, /MTA-STS policy for sts\.test \(enforce\): no MX host matches the policy \(MX other\.sts\.test; policy mx: mx\.sts\.test\)/);
    assert.equal(verified.got('sts cached'), undefined);
    a.cli(['queue', 'delete', id]);
  });
});
