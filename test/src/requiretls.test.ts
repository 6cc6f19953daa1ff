/**
 * REQUIRETLS (issue 13 item 4, RFC 8689), end to end: instance A takes
 * `MAIL FROM:<…> REQUIRETLS` only over TLS, keeps the flag in the queue file,
 * and relays the message only over TLS verified by MTA-STS to a server that
 * offers REQUIRETLS: instance B (b.test, a certificate from the test CA, an
 * MTA-STS enforce policy), which keeps the flag and applies the same rule on
 * its next hop. Unverified TLS, or a server without REQUIRETLS: bounced 5.7.10.
 * Fixtures as in mta-sts.test.ts: test CA, HTTPS policy server, loopback DNS.
 */
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as tls from 'node:tls';
import * as path from 'node:path';
import * as https from 'node:https';
import { EnvelopeSink } from './smtp-sink.js';
import { Instance, RawSmtp, waitFor, freePort, tempDir } from './harness.js';
import { TestDnsServer } from './dns-server.js';
import { TestCa, selfSigned } from './tls-fixtures.js';

/** A line-at-a-time SMTP client that can STARTTLS (RawSmtp cannot). */
class TlsClient {
  private buf = '';
  private constructor(private sock: net.Socket) { this.listen(); }
  private listen() { this.sock.on('data', (d) => { this.buf += d.toString('latin1'); }); this.sock.on('error', () => undefined); }
  static async connect(port: number): Promise<TlsClient> {
    const sock = net.createConnection({ port, host: '127.0.0.1' });
    await new Promise<void>((res, rej) => { sock.once('connect', res); sock.once('error', rej); });
    const c = new TlsClient(sock);
    await c.reply();
    return c;
  }
  async reply(): Promise<string> {
    return waitFor('an SMTP reply', () => {
      const m = /^(?:\d{3}-[^\n]*\n)*\d{3}(?: [^\n]*)?\r?\n/.exec(this.buf);
      if (!m) return null;
      this.buf = this.buf.slice(m[0].length);
      return m[0].trimEnd();
    }, 10000, 20);
  }
  async command(line: string): Promise<string> { this.sock.write(line + '\r\n'); return this.reply(); }
  async starttls(): Promise<void> {
    assert.match(await this.command('STARTTLS'), /^220/);
    this.sock.removeAllListeners('data');
    const secure = tls.connect({ socket: this.sock, rejectUnauthorized: false });
    await new Promise<void>((res, rej) => { secure.once('secureConnect', res); secure.once('error', rej); });
    this.sock = secure;
    this.listen();
  }
  close(): void { this.sock.destroy(); }
}

/** alice sends over STARTTLS on A's port 25 (loopback: A's mynetworks) with MAIL ... REQUIRETLS; returns the queue id. */
async function sendRequireTls(port: number, to: string, subject: string): Promise<string> {
  const c = await TlsClient.connect(port);
  try {
    await c.command('EHLO client.a.test');
    await c.starttls();
    assert.match(await c.command('EHLO client.a.test'), /^250-REQUIRETLS\r?$/m);
    assert.match(await c.command('MAIL FROM:<alice@a.test> REQUIRETLS'), /^250 /);
    assert.match(await c.command(`RCPT TO:<${to}>`), /^250 /);
    assert.match(await c.command('DATA'), /^354/);
    const reply = await c.command(`From: alice@a.test\r\nTo: ${to}\r\nSubject: ${subject}\r\n\r\nbody of ${subject}\r\n.`);
    const id = /queued as ([0-9A-F]{20})/.exec(reply)?.[1];
    assert.ok(id, `queued: ${reply}`);
    await c.command('QUIT');
    return id;
  } finally {
    c.close();
  }
}

const POLICIES: Record<string, string> = {
  'b.test': 'version: STSv1\nmode: enforce\nmx: mx.b.test\nmax_age: 86400\n',
  'nort.test': 'version: STSv1\nmode: enforce\nmx: mx.nort.test\nmax_age: 86400\n',
};

describe('REQUIRETLS (RFC 8689): two instances', () => {
  let dns: TestDnsServer;
  let a: Instance;
  let b: Instance;
  let policyServer: https.Server;
  let noRequireTls: EnvelopeSink;
  let unverified: EnvelopeSink;
  /** The same host on A's port, for B's deliveries (smtp_port is one per instance). */
  let unverifiedForB: EnvelopeSink;

  before(async () => {
    const ca = new TestCa();
    const httpsPort = await freePort('127.0.0.70');
    const web = ca.issue(Object.keys(POLICIES).map((d) => `mta-sts.${d}`));
    policyServer = https.createServer({ key: web.key, cert: web.cert }, (req, res) => {
      const domain = String(req.headers.host).replace(/^mta-sts\./, '').replace(/:\d+$/, '');
      if (req.url !== '/.well-known/mta-sts.txt' || !POLICIES[domain]) { res.writeHead(404); res.end(); return; }
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(POLICIES[domain]);
    });
    await new Promise<void>((r) => policyServer.listen(httpsPort, '127.0.0.70', r));
    a = await Instance.create({ domain: 'a.test', users: [{ address: 'alice@a.test' }] });
    // B's smtpd presents a certificate from the test CA for its MX name, so A can verify it under MTA-STS
    const bCert = ca.issue(['mx.b.test']);
    const aliases = path.join(tempDir('requiretls-aliases'), 'virtual');
    fs.writeFileSync(aliases, 'onward@b.test someone@self.test\n');
    b = await Instance.create({ domain: 'b.test', users: [{ address: 'bob@b.test' }],
      main: { smtpd_tls_cert_file: bCert.certFile, smtpd_tls_key_file: bCert.keyFile, virtual_alias_maps: `texthash:${aliases}` } });
    const port = b.ports.smtp;
    noRequireTls = await new EnvelopeSink('127.0.0.71', port, { tls: ca.issue(['mx.nort.test']), requireTls: false }).start();
    const selfPair = selfSigned('mx.self.test');
    unverified = await new EnvelopeSink('127.0.0.72', port, { tls: selfPair, requireTls: true }).start();
    unverifiedForB = await new EnvelopeSink('127.0.0.72', a.ports.smtp, { tls: selfPair, requireTls: true }).start();
    const records: any[] = [
      { name: 'a.test', type: 'MX', value: { priority: 10, exchange: 'mx.a.test' } },
      { name: 'mx.a.test', type: 'A', value: '127.0.0.1' },
      { name: 'b.test', type: 'MX', value: { priority: 10, exchange: 'mx.b.test' } },
      { name: 'mx.b.test', type: 'A', value: '127.0.0.1' },
      { name: 'nort.test', type: 'MX', value: { priority: 10, exchange: 'mx.nort.test' } },
      { name: 'mx.nort.test', type: 'A', value: '127.0.0.71' },
      // no MTA-STS, no DANE: TLS is opportunistic and unverified
      { name: 'self.test', type: 'MX', value: { priority: 10, exchange: 'mx.self.test' } },
      { name: 'mx.self.test', type: 'A', value: '127.0.0.72' },
      // nothing listens there: the message stays deferred
      { name: 'dead.test', type: 'MX', value: { priority: 10, exchange: 'mx.dead.test' } },
      { name: 'mx.dead.test', type: 'A', value: '127.0.0.73' },
    ];
    for (const d of Object.keys(POLICIES)) {
      records.push({ name: `_mta-sts.${d}`, type: 'TXT', value: 'v=STSv1; id=20260101', ttl: 1 });
      records.push({ name: `mta-sts.${d}`, type: 'A', value: '127.0.0.70' });
    }
    dns = await new TestDnsServer({ records }).start();
    for (const [inst, port2] of [[a, b.ports.smtp], [b, a.ports.smtp]] as const) {
      inst.cli(['config', 'set', `dns_servers=${dns.address}`, `smtp_port=${port2}`, `smtp_tls_CAfile=${ca.certFile}`,
        `smtp_mta_sts_https_port=${httpsPort}`, 'smtp_dead_destination_time=1s']);
    }
    await a.start();
    await b.start();
  });
  after(async () => {
    await a?.destroy(); await b?.destroy();
    await noRequireTls?.stop(); await unverified?.stop(); await unverifiedForB?.stop();
    if (policyServer?.listening) await new Promise((r) => policyServer.close(r));
    await dns?.close();
  });

  it('REQUIRETLS is offered only after STARTTLS (from the start on 465); MAIL ... REQUIRETLS without TLS: 530 5.7.10', async () => {
    const c = await TlsClient.connect(a.ports.smtp);
    try {
      const plain = await c.command('EHLO client.a.test');
      assert.match(plain, /^250-STARTTLS\r?$/m);
      assert.doesNotMatch(plain, /REQUIRETLS/);
      assert.match(await c.command('MAIL FROM:<alice@a.test> REQUIRETLS'), /^530 5\.7\.10 REQUIRETLS needs a TLS session/);
      await c.starttls();
      assert.match(await c.command('EHLO client.a.test'), /^250[- ]REQUIRETLS\r?$/m);
    } finally {
      c.close();
    }
    const s = await RawSmtp.connectTls(a.ports.submissions);
    try {
      assert.match(await s.command('EHLO client.a.test'), /^250[- ]REQUIRETLS\r?$/m);
    } finally {
      s.close();
    }
  });

  it('relayed over MTA-STS-verified TLS to B, which offers REQUIRETLS: MAIL FROM ... REQUIRETLS, delivered', async () => {
    const id = await sendRequireTls(a.ports.smtp, 'bob@b.test', 'requiretls to b');
    const file = await waitFor('bob got it at B', () => b.delivered('bob@b.test').find((f) => fs.readFileSync(f, 'utf8').includes('Subject: requiretls to b')), 30000);
    assert.ok(file);
    const line = await a.waitForLog('Verified TLS to B', (e) => e.queue_id === id && /^Verified TLS connection established to mx\.b\.test\[/.test(e.msg));
    assert.equal(line.tls_policy, 'mta-sts');
    await a.waitForLog('sent', (e) => e.queue_id === id && e.status === 'sent' && e.to === '<bob@b.test>');
  });

  it('B keeps the flag: relaying on to a next hop with unverified TLS, B bounces it with 5.7.10 and alice gets the notice', async () => {
    const id = await sendRequireTls(a.ports.smtp, 'onward@b.test', 'requiretls onward');
    await a.waitForLog('sent to B', (e) => e.queue_id === id && e.status === 'sent', 30000);
    const bounced = await b.waitForLog('B bounces it', (e) => e.to === '<someone@self.test>' && e.status === 'bounced', 30000);
    assert.equal(bounced.dsn, '5.7.10');
    assert.match(bounced.msg, /REQUIRETLS: no mail host of self\.test meets the requirement: mx\.self\.test\[127\.0\.0\.72\]:\d+: TLS not verified by DANE or MTA-STS/);
    assert.equal(unverifiedForB.got('requiretls onward'), undefined, 'nothing sent over unverified TLS');
    const notice = await waitFor('the bounce at alice', () => a.delivered('alice@a.test').map((f) => fs.readFileSync(f, 'utf8'))
      .find((t) => t.includes('Subject: requiretls onward') && /^Status: 5\.7\.10\r?$/m.test(t)), 30000);
    assert.match(notice, /^Final-Recipient: rfc822; someone@self\.test\r?$/m);
  });

  it('A keeps the flag in the queue file; unverified TLS at the next hop: bounced 5.7.10, nothing sent', async () => {
    const held = await sendRequireTls(a.ports.smtp, 'rcpt@dead.test', 'requiretls deferred');
    const file = await waitFor('the message deferred', () => a.queued('deferred').find((f) => f.endsWith(held)), 30000);
    const text = fs.readFileSync(file, 'latin1');
    const m0 = /^POSTERN-QUEUE 1\nE (\d+)\n/.exec(text)!;
    assert.equal(JSON.parse(text.slice(m0[0].length, m0[0].length + Number(m0[1]))).requireTls, true);
    a.cli(['queue', 'delete', held]);
    const id = await sendRequireTls(a.ports.smtp, 'rcpt@self.test', 'requiretls unverified');
    const line = await a.waitForLog('bounced', (e) => e.queue_id === id && e.status === 'bounced', 30000);
    assert.equal(line.dsn, '5.7.10');
    assert.equal(unverified.got('requiretls unverified'), undefined);
    // the same without REQUIRETLS goes out (opportunistic TLS): the flag, not the host, made the difference
    const c = await TlsClient.connect(a.ports.smtp);
    try {
      await c.command('EHLO client.a.test');
      assert.match(await c.command('MAIL FROM:<alice@a.test>'), /^250 /);
      assert.match(await c.command('RCPT TO:<rcpt@self.test>'), /^250 /);
      assert.match(await c.command('DATA'), /^354/);
      assert.match(await c.command('Subject: without requiretls\r\n\r\nbody\r\n.'), /^250 /);
    } finally {
      c.close();
    }
    const m = await waitFor('the message without REQUIRETLS at the host', () => unverified.got('without requiretls'), 20000);
    assert.equal(m.envelope.requireTLS, false);
  });

  it('verified TLS, but the server does not offer REQUIRETLS: bounced 5.7.10, nothing sent', async () => {
    const id = await sendRequireTls(a.ports.smtp, 'rcpt@nort.test', 'requiretls not offered');
    const line = await a.waitForLog('bounced', (e) => e.queue_id === id && e.status === 'bounced', 30000);
    assert.equal(line.dsn, '5.7.10');
    assert.match(line.msg, /server does not offer REQUIRETLS/);
    await a.waitForLog('verified TLS there', (e) => e.queue_id === id && /^Verified TLS connection established to mx\.nort\.test\[/.test(e.msg));
    assert.equal(noRequireTls.got('requiretls not offered'), undefined);
  });
});
