/**
 * DANE (issue 13 item 2, RFC 7672): zones signed with ldns-signzone, served by
 * nsd, validated by unbound (the trust anchors are the zones' DS records), all
 * on loopback; Postern asks unbound with smtp_dns_support_level = dnssec and
 * trusts its AD bit. Receivers are smtp-server instances offering STARTTLS.
 */
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Instance, waitFor, tempDir, freePort, submitAs } from './harness.js';
import { DnssecLab, TlsSink, TestCa, selfSigned, tlsaSha256 } from './tls-fixtures.js';
import { DnsResolver } from '../../packages/common/dist/index.js';

const SENDER = 'alice@a.test';
const PASS = 'alice-secret';

const submit = (a: Instance, to: string, subject: string) => submitAs(a, SENDER, PASS, to, subject);

describe('DANE (RFC 7672) through a validating resolver', () => {
  let lab: DnssecLab;
  let a: Instance;
  let port: number;
  const sinks: TlsSink[] = [];
  let good: TlsSink, wrong: TlsSink, plain: TlsSink, ta: TlsSink;

  before(async () => {
    port = await freePort('127.0.0.41');
    const eeCert = selfSigned('mx.dane.test'); // DANE-EE needs no CA
    const ca = new TestCa();
    const taCert = ca.issue(['mx.ta.test'], true); // DANE-TA: the server sends its chain up to the CA
    const eeHash = tlsaSha256(eeCert.cert, 1);
    // every zone also announces an MTA-STS policy (its server, 127.0.0.45, is down): DANE must win where it applies
    const zoneRecords = (z: string, addr: string, tlsa?: string) => [
      `@ IN MX 10 mx.${z}.`, `mx IN A ${addr}`, ...(tlsa ? [`_${port}._tcp.mx IN TLSA ${tlsa}`] : []),
      '_mta-sts IN TXT "v=STSv1; id=1"', 'mta-sts IN A 127.0.0.45'];
    lab = await new DnssecLab([
      { name: 'dane.test', signed: true, records: zoneRecords('dane.test', '127.0.0.41', `3 1 1 ${tlsaSha256(eeCert.cert, 1)}`) },
      { name: 'wrong.test', signed: true, records: zoneRecords('wrong.test', '127.0.0.42', `3 1 1 ${'00'.repeat(32)}`) },
      { name: 'bogus.test', signed: true, records: zoneRecords('bogus.test', '127.0.0.41', `3 1 1 ${eeHash}`),
        // the TLSA record is changed after signing: its RRSIG no longer matches, the MX and A records stay valid
        corrupt: (t) => t.replace(eeHash, 'ff'.repeat(32)) },
      { name: 'plain.test', signed: false, records: zoneRecords('plain.test', '127.0.0.43', `3 1 1 ${'00'.repeat(32)}`) },
      { name: 'ta.test', signed: true, records: zoneRecords('ta.test', '127.0.0.44', `2 0 1 ${tlsaSha256(ca.pem, 0)}`) },
    ]).start();
    assert.ok(fs.readFileSync(path.join(lab.dir, 'bogus.test.zone.signed'), 'utf8').includes('ff'.repeat(32)), 'bogus.test corrupted');
    good = await new TlsSink('127.0.0.41', port, eeCert).start();
    wrong = await new TlsSink('127.0.0.42', port, selfSigned('mx.wrong.test')).start();
    plain = await new TlsSink('127.0.0.43', port, selfSigned('mx.plain.test')).start();
    ta = await new TlsSink('127.0.0.44', port, taCert).start();
    sinks.push(good, wrong, plain, ta);
    const policy = path.join(tempDir('tls-policy'), 'tls_policy');
    // per destination, as Postfix's smtp_tls_policy_maps; the default stays may
    fs.writeFileSync(policy, ['dane.test', 'wrong.test', 'bogus.test', 'plain.test', 'ta.test'].map((d) => `${d} dane`).join('\n') + '\n');
    a = await Instance.create({ domain: 'a.test', users: [{ address: SENDER, password: PASS }],
      main: { dns_servers: lab.resolver, smtp_dns_support_level: 'dnssec', smtp_port: String(port), smtp_tls_policy_maps: `texthash:${policy}`,
        smtp_dead_destination_time: '1s' } });
    await a.start();
  });
  after(async () => {
    if (a) { if (!process.env.KEEP) await a.destroy(); else { await a.stop(); console.log('kept', a.dir); } }
    for (const s of sinks) await s.stop();
    if (lab) await lab.stop();
  });

  it('the resolver sets AD for the signed zone and not for the unsigned one (resolveSecure)', async () => {
    const r = new DnsResolver({ servers: [{ host: '127.0.0.1', port: lab.resolverPort }], timeoutMs: 3000 });
    const signed = await r.resolveSecure('dane.test', 'MX');
    assert.equal(signed.secure, true, lab.log());
    assert.equal(signed.records[0].data.exchange, 'mx.dane.test');
    const tlsa = await r.resolveSecure(`_${port}._tcp.mx.dane.test`, 'TLSA');
    assert.equal(tlsa.secure, true);
    assert.deepEqual([tlsa.records[0].data.usage, tlsa.records[0].data.selector, tlsa.records[0].data.matchingType], [3, 1, 1]);
    assert.equal((await r.resolveSecure('plain.test', 'MX')).secure, false);
    assert.equal((await r.resolveSecure('bogus.test', 'MX')).secure, true);
    await assert.rejects(r.resolveSecure(`_${port}._tcp.mx.bogus.test`, 'TLSA'), (e: any) => e.code === 'SERVFAIL' && e.temporary);
  });

  it('a matching TLSA record (3 1 1) delivers, logged as Verified TLS', async () => {
    const id = await submit(a, 'rcpt@dane.test', 'dane ee');
    await waitFor('message at mx.dane.test', () => good.got('dane ee'), 20000);
    assert.equal(good.got('dane ee')!.secure, true);
    const line = await a.waitForLog('Verified TLS line', (e) => e.queue_id === id && /^Verified TLS connection established to mx\.dane\.test\[127\.0\.0\.41\]/.test(e.msg));
    assert.equal(line.tls_policy, 'dane');
    assert.equal(line.verified, true);
    await a.waitForLog('sent line', (e) => e.queue_id === id && e.status === 'sent');
    // DANE takes precedence: the domain's MTA-STS policy was not even looked for
    assert.deepEqual(a.logs().filter((e) => e.queue_id === id && /MTA-STS/.test(e.msg)).map((e) => e.msg), []);
  });

  it('DANE-TA (2 0 1): the CA of the presented chain matches, the name is checked, and it delivers', async () => {
    const id = await submit(a, 'rcpt@ta.test', 'dane ta');
    await waitFor('message at mx.ta.test', () => ta.got('dane ta'), 20000);
    await a.waitForLog('Verified TLS line', (e) => e.queue_id === id && /^Verified TLS connection established to mx\.ta\.test/.test(e.msg));
  });

  it('a TLSA record that does not match the certificate defers, nothing is sent', async () => {
    const id = await submit(a, 'rcpt@wrong.test', 'dane wrong');
    const line = await a.waitForLog('deferred', (e) => e.queue_id === id && e.status === 'deferred', 20000);
    assert.equal(line.dsn, '4.7.5');
    assert.match(line.msg, /DANE: TLS certificate of mx\.wrong\.test\[127\.0\.0\.42\]:\d+ not accepted: DANE: no TLSA record matches the certificate/);
    await a.waitForLog('Untrusted TLS line', (e) => e.queue_id === id && /^Untrusted TLS connection established to mx\.wrong\.test/.test(e.msg));
    assert.equal(wrong.got('dane wrong'), undefined);
    a.cli(['queue', 'delete', id]);
  });

  it('a bogus zone (broken signature on the TLSA record) defers; the host is not used', async () => {
    const id = await submit(a, 'rcpt@bogus.test', 'dane bogus');
    const line = await a.waitForLog('deferred', (e) => e.queue_id === id && e.status === 'deferred', 20000);
    assert.equal(line.dsn, '4.7.5');
    assert.match(line.msg, /bogus\.test: DANE: mx\.bogus\.test: TLSA lookup failed: .*SERVFAIL/);
    assert.equal(good.got('dane bogus'), undefined);
    a.cli(['queue', 'delete', id]);
  });

  it('an unsigned zone delivers with opportunistic TLS, its TLSA record ignored', async () => {
    const id = await submit(a, 'rcpt@plain.test', 'dane insecure');
    await waitFor('message at mx.plain.test', () => plain.got('dane insecure'), 20000);
    const line = await a.waitForLog('TLS line', (e) => e.queue_id === id && /TLS connection established to mx\.plain\.test/.test(e.msg));
    assert.match(line.msg, /^Untrusted TLS/);
    assert.equal(line.tls_policy, 'may');
    assert.equal(line.verified, false);
    // no DANE here, so the MTA-STS policy is looked for (its server is down: no policy)
    await a.waitForLog('MTA-STS consulted', (e) => e.queue_id === id && e.msg === 'MTA-STS policy fetch failed; no policy');
  });
});
