/**
 * Outbound delivery (issue 3, item 4): MX lookup through a DNS server on
 * loopback, Postfix's smtp-sink as the remote (4xx defers then a retry
 * delivers, 5xx bounces with a DSN, a dead MX falls through to the next), and
 * a smart host that requires STARTTLS and AUTH.
 */
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as net from 'node:net';
import { SMTPServer } from 'smtp-server';
import { simpleParser } from 'mailparser';
import { Instance, run, freePort, waitFor, tempDir, submitAs } from './harness.js';
import { SmtpSink } from './smtp-sink.js';
import { TestDnsServer } from './dns-server.js';

const SENDER = 'alice@a.test';
const PASS = 'alice-secret';


const submit = (a: Instance, to: string, subject: string) => submitAs(a, SENDER, PASS, to, subject);

describe('outbound delivery through MX lookup', () => {
  let dns: TestDnsServer;
  let a: Instance;
  let port: number;

  let policyFile: string;
  before(async () => {
    port = await freePort('127.0.0.3');
    policyFile = path.join(tempDir('tls-policy'), 'tls_policy');
    fs.writeFileSync(policyFile, 'strict.test encrypt\n');
    dns = await new TestDnsServer({ records: [
      { name: 'sink.test', type: 'MX', value: { priority: 10, exchange: 'mx.sink.test' } },
      { name: 'mx.sink.test', type: 'A', value: '127.0.0.3' },
      { name: 'soft.test', type: 'MX', value: { priority: 10, exchange: 'mx.soft.test' } },
      { name: 'mx.soft.test', type: 'A', value: '127.0.0.5' },
      { name: 'hard.test', type: 'MX', value: { priority: 10, exchange: 'mx.hard.test' } },
      { name: 'mx.hard.test', type: 'A', value: '127.0.0.6' },
      { name: 'dead.test', type: 'MX', value: { priority: 10, exchange: 'mx1.dead.test' } },
      { name: 'dead.test', type: 'MX', value: { priority: 20, exchange: 'mx2.dead.test' } },
      { name: 'mx1.dead.test', type: 'A', value: '127.0.0.4' },
      { name: 'mx2.dead.test', type: 'A', value: '127.0.0.3' },
      { name: 'nullmx.test', type: 'MX', value: { priority: 0, exchange: '.' } },
      { name: 'strict.test', type: 'MX', value: { priority: 10, exchange: 'mx.strict.test' } },
      { name: 'mx.strict.test', type: 'A', value: '127.0.0.3' },
      { name: 'badtls.test', type: 'MX', value: { priority: 10, exchange: 'mx.badtls.test' } },
      { name: 'mx.badtls.test', type: 'A', value: '127.0.0.8' },
    ] }).start();
    a = await Instance.create({ domain: 'a.test', users: [{ address: SENDER, password: PASS }],
      main: { dns_servers: dns.address, smtp_port: String(port), smtp_dead_destination_time: '60s', smtp_tls_policy_maps: `texthash:${policyFile}` } });
    await a.start();
  });
  after(async () => { if (!process.env.KEEP) await a.destroy(); else console.log("kept", a.dir); await dns.close(); });

  it('delivers to the MX host (smtp-sink)', async () => {
    const sink = await new SmtpSink('127.0.0.3', port).start();
    try {
      await submit(a, 'rcpt@sink.test', 'to the sink');
      await waitFor('message at smtp-sink', () => sink.received().some((m) => m.includes('Subject: to the sink')), 20000);
      await waitFor('queue empty', () => a.queueEmpty(), 10000);
      const sent = await a.waitForLog('sent log line', (e) => e.status === 'sent' && e.to === '<rcpt@sink.test>');
      assert.match(sent.relay, /mx\.sink\.test\[127\.0\.0\.3\]/);
    } finally { await sink.stop(); }
  });

  it('a 4xx at RCPT defers; a later retry delivers', async () => {
    const soft = await new SmtpSink('127.0.0.5', port, ['-r', 'RCPT']).start();
    let id: string;
    try {
      id = await submit(a, 'rcpt@soft.test', 'soft first');
      const deferred = await a.waitForLog('deferred line', (e) => e.queue_id === id && e.status === 'deferred', 20000);
      assert.match(deferred.dsn, /^4\./);
      const q = JSON.parse(a.cli(['queue', 'list', '--json']).stdout.split('\n').find((l) => l.includes(id))!);
      assert.equal(q.recipients[0].address, 'rcpt@soft.test');
      assert.match(q.recipients[0].delay_reason, /450 4\.3\.0/);
    } finally { await soft.stop(); }
    const ok = await new SmtpSink('127.0.0.5', port).start();
    try {
      a.cli(['config', 'set', 'smtp_dead_destination_time=1s']);
      await waitFor('retry delivered', () => ok.received().some((m) => m.includes('Subject: soft first')), 30000);
      await waitFor('queue empty', () => a.queueEmpty(), 10000);
    } finally { await ok.stop(); }
  });

  it('a 5xx at RCPT bounces, and the DSN reaches the sender with Status and Action', async () => {
    const hard = await new SmtpSink('127.0.0.6', port, ['-f', 'RCPT']).start();
    try {
      const id = await submit(a, 'nobody@hard.test', 'doomed');
      await a.waitForLog('bounced line', (e) => e.queue_id === id && e.status === 'bounced', 20000);
      const file = await waitFor('DSN in the sender\'s Maildir', () => a.delivered(SENDER).find((f) => fs.readFileSync(f, 'utf8').includes('multipart/report')), 20000);
      const dsn = await simpleParser(fs.readFileSync(file));
      assert.match(String(dsn.headers.get('content-type') && (dsn.headers.get('content-type') as any).value), /multipart\/report/);
      const raw = fs.readFileSync(file, 'utf8');
      assert.match(raw, /Action: failed/);
      assert.match(raw, /Status: 5\.3\.0/);
      assert.match(raw, /Final-Recipient: rfc822; ?nobody@hard\.test/);
      assert.match(raw, /Return-Path: <>/);
      await waitFor('queue empty', () => a.queueEmpty(), 10000);
    } finally { await hard.stop(); }
  });

  it('a dead MX falls through to the next MX', async () => {
    const sink = await new SmtpSink('127.0.0.3', port).start();
    const atSink = () => sink.received().filter((m) => m.includes('Subject: via second mx')).length;
    // the first MX accepts TCP and drops the connection before any greeting: dead, but countable
    let firstMxConnections = 0;
    let atSinkWhenFirstTried: number | null = null;
    const deadMx = net.createServer((c) => { firstMxConnections++; atSinkWhenFirstTried ??= atSink(); c.destroy(); });
    await new Promise<void>((r) => deadMx.listen(port, '127.0.0.4', r));
    try {
      const id = await submit(a, 'rcpt@dead.test', 'via second mx');
      const sent = await a.waitForLog('the sent line', (e) => e.queue_id === id && e.status === 'sent', 20000);
      assert.match(sent.relay, /^mx2\.dead\.test\[127\.0\.0\.3\]/, 'delivered by the second MX');
      assert.ok(firstMxConnections >= 1, 'the first MX (priority 10) was tried');
      assert.equal(atSinkWhenFirstTried, 0, 'the first MX was tried before the second got the message');
      assert.equal(atSink(), 1, 'one copy at the second MX');
      await waitFor('queue empty', () => a.queueEmpty(), 10000);
    } finally {
      await sink.stop();
      await new Promise((r) => deadMx.close(r));
    }
  });

  it('smtp_tls_policy_maps "encrypt": a destination without STARTTLS is deferred, never sent in the clear', async () => {
    const sink = await new SmtpSink('127.0.0.3', port).start(); // smtp-sink offers no STARTTLS
    try {
      const id = await submit(a, 'rcpt@strict.test', 'must be encrypted');
      const line = await a.waitForLog('deferred for TLS', (e) => e.queue_id === id && e.status === 'deferred', 20000);
      assert.equal(line.dsn, '4.7.5');
      assert.ok(!sink.received().some((m) => m.includes('must be encrypted')));
      a.cli(['queue', 'delete', id]);
    } finally { await sink.stop(); }
  });

  it('opportunistic TLS: a failed STARTTLS handshake is retried in plaintext on the same host', async () => {
    // a server that offers STARTTLS, then answers the handshake with garbage, and takes mail in plaintext
    let sessions = 0;
    const got: string[] = [];
    const server = net.createServer((c) => {
      sessions++;
      let buf = '';
      let data = false;
      c.write('220 badtls.test ESMTP\r\n');
      c.on('data', (d) => {
        buf += d.toString('latin1');
        let nl: number;
        while ((nl = buf.indexOf('\r\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 2);
          if (data) {
            if (line === '.') { data = false; c.write('250 2.0.0 Ok\r\n'); } else got.push(line);
            continue;
          }
          const cmd = line.slice(0, 4).toUpperCase();
          if (cmd === 'EHLO') c.write('250-badtls.test\r\n250-STARTTLS\r\n250 8BITMIME\r\n');
          else if (cmd === 'STAR') { c.write('220 2.0.0 Ready\r\n'); setTimeout(() => c.end('this is not TLS\r\n'), 50); }
          else if (cmd === 'DATA') { data = true; c.write('354 go\r\n'); }
          else if (cmd === 'QUIT') c.end('221 Bye\r\n');
          else c.write('250 2.0.0 Ok\r\n');
        }
      });
      c.on('error', () => undefined);
    });
    await new Promise<void>((r) => server.listen(port, '127.0.0.8', r));
    try {
      await submit(a, 'rcpt@badtls.test', 'plaintext fallback');
      await waitFor('message over plaintext', () => got.some((l) => l === 'Subject: plaintext fallback'), 20000);
      assert.ok(sessions >= 2, 'a second, plaintext session after the failed handshake');
      await a.waitForLog('fallback logged', (e) => /TLS handshake failed; retrying in plaintext/.test(e.msg));
    } finally { await new Promise((r) => server.close(r)); }
  });

  it('a null MX bounces at once', async () => {
    const id = await submit(a, 'rcpt@nullmx.test', 'null mx');
    const line = await a.waitForLog('bounced line', (e) => e.queue_id === id && e.status === 'bounced', 20000);
    assert.equal(line.dsn, '5.1.10');
  });
});

describe('relayhost: a smart host requiring STARTTLS and AUTH', () => {
  let a: Instance;
  let smart: SMTPServer;
  const got: { user: string; secure: boolean; from: string; data: string }[] = [];

  before(async () => {
    const tlsDir = tempDir('smarthost');
    run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=smart.test',
      '-keyout', path.join(tlsDir, 'k.pem'), '-out', path.join(tlsDir, 'c.pem')]);
    const port = await freePort();
    smart = new SMTPServer({
      key: fs.readFileSync(path.join(tlsDir, 'k.pem')), cert: fs.readFileSync(path.join(tlsDir, 'c.pem')),
      authMethods: ['PLAIN', 'LOGIN'], allowInsecureAuth: false, logger: false,
      onAuth(auth, _s, cb) { if (auth.username === 'relayuser' && auth.password === 'relaypass') cb(null, { user: 'relayuser' }); else cb(new Error('bad')); },
      onMailFrom(_a, s, cb) { if (!s.secure) return cb(new Error('TLS required')); cb(); },
      onData(stream, s, cb) {
        let data = '';
        stream.on('data', (d) => { data += d; });
        stream.on('end', () => { got.push({ user: String(s.user), secure: s.secure, from: s.envelope.mailFrom ? s.envelope.mailFrom.address : '', data }); cb(); });
      },
    });
    await new Promise<void>((r) => smart.listen(port, '127.0.0.1', r));
    const creds = path.join(tempDir('sasl'), 'sasl_passwd');
    fs.writeFileSync(creds, `[127.0.0.1]:${port} relayuser:relaypass\n`);
    a = await Instance.create({ domain: 'a.test', users: [{ address: SENDER, password: PASS }],
      main: { relayhost: `[127.0.0.1]:${port}`, smtp_sasl_password_maps: `texthash:${creds}` } });
    await a.start();
  });
  after(async () => { await a.destroy(); await new Promise<void>((r) => smart.close(() => r())); });

  it('sends everything through the smart host with STARTTLS and AUTH', async () => {
    await submit(a, 'friend@far-away.test', 'through the smart host');
    await waitFor('message at the smart host', () => got.length > 0, 20000);
    assert.equal(got[0].user, 'relayuser');
    assert.equal(got[0].secure, true);
    assert.equal(got[0].from, SENDER);
    assert.match(got[0].data, /Subject: through the smart host/);
  });
});
