/**
 * Submission (issue 3, item 1): 587 with STARTTLS and 465 with implicit TLS,
 * AUTH PLAIN/LOGIN only after TLS, the replies for every way to get it wrong,
 * and nothing queued for any of them. Real clients: swaks and nodemailer.
 */
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tls from 'node:tls';
import nodemailer from 'nodemailer';
import { Instance, run, requireTool, waitFor, RawSmtp } from './harness.js';

const USER = 'alice@example.test';
const PASS = 'correct horse';

function swaks(args: string[]): { code: number; out: string } {
  const r = run(requireTool('swaks'), ['--timeout', '20', ...args]);
  return { code: r.code, out: r.stdout + r.stderr };
}

/** The delivered files in a user's Maildir that carry this Subject. */
function deliveredWithSubject(inst: Instance, address: string, subject: string): string[] {
  const re = new RegExp(`^Subject: ${subject.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\r?$`, 'm');
  return inst.delivered(address).filter((f) => re.test(fs.readFileSync(f, 'utf8')));
}

interface TlsAttempt { greeting?: string; protocol?: string | null; error?: NodeJS.ErrnoException }

/**
 * One TLS handshake pinned to a single protocol version. SECLEVEL=0 lets Node's
 * OpenSSL 3 offer TLS 1.1 at all: without it the client refuses by itself ("no
 * protocols available") and a refusal would prove nothing about the server.
 */
function tlsAttempt(port: number, version: 'TLSv1.1' | 'TLSv1.2'): Promise<TlsAttempt> {
  return new Promise((resolve) => {
    const sock = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, minVersion: version, maxVersion: version,
      ciphers: 'DEFAULT@SECLEVEL=0' });
    const timer = setTimeout(() => { sock.destroy(); resolve({ error: Object.assign(new Error('no handshake result within 10 s'), { code: 'TIMEOUT' }) }); }, 10000);
    const done = (r: TlsAttempt) => { clearTimeout(timer); sock.destroy(); resolve(r); };
    sock.once('error', (e) => done({ error: e }));
    sock.once('secureConnect', () => {
      const protocol = sock.getProtocol();
      let buf = '';
      sock.on('data', (d) => { buf += d.toString('latin1'); if (buf.includes('\n')) done({ greeting: buf.trimEnd(), protocol }); });
      sock.once('end', () => done({ greeting: buf, protocol }));
    });
  });
}

/**
 * `postern reload`, then wait until every smtpd process of the listener on
 * this port has logged "configuration reloaded" (so the next connection meets
 * the new settings); the reload must not have been refused.
 */
async function reloadAndWait(inst: Instance, port: number): Promise<void> {
  const mark = inst.logs().length;
  const pids = (inst.status().services as { service: string; command: string; pid: number; running: boolean }[])
    .filter((s) => s.command === 'smtpd' && s.running && new RegExp(`(^|:)${port}$`).test(s.service)).map((s) => s.pid);
  assert.ok(pids.length > 0, `an smtpd process listens on port ${port}`);
  inst.cli(['reload']);
  await waitFor(`every smtpd on port ${port} (pids ${pids.join(' ')}) to log "configuration reloaded"`, () => {
    const fresh = inst.logs().slice(mark);
    const refused = fresh.find((e) => /^reload refused/.test(e.msg) || /^reload failed/.test(e.msg));
    if (refused) throw new Error(`reload refused: ${JSON.stringify(refused)}`);
    return pids.every((pid) => fresh.some((e) => e.pid === pid && e.msg === 'configuration reloaded'));
  }, 20000);
}

describe('submission on 587 and 465', () => {
  let inst: Instance;
  before(async () => {
    inst = await Instance.create({ users: [{ address: USER, password: PASS }, { address: 'bob@example.test' }] });
    await inst.start();
  });
  after(async () => { await inst.destroy(); });

  it('swaks over 587 with STARTTLS and AUTH PLAIN relays to a remote domain and logs the user', async () => {
    const r = swaks(['--server', `127.0.0.1:${inst.ports.submission}`, '-tls', '--auth', 'PLAIN', '--auth-user', USER,
      '--auth-password', PASS, '--from', USER, '--to', 'someone@remote.test', '--header', 'Subject: relay via 587']);
    assert.match(r.out, /250 2\.0\.0 Ok: queued as [0-9A-F]{20}/, r.out);
    const line = await inst.waitForLog('smtpd queued line with sasl_username', (e) => e.msg === 'queued' && e.sasl_username === USER);
    assert.ok(line.queue_id);
  });

  it('nodemailer over 587 (STARTTLS, AUTH LOGIN) delivers to a local user with ESMTPSA in Received:', async () => {
    const t = nodemailer.createTransport({ host: '127.0.0.1', port: inst.ports.submission, secure: false, requireTLS: true,
      auth: { user: USER, pass: PASS, method: 'LOGIN' } as any, tls: { rejectUnauthorized: false } });
    const info = await t.sendMail({ from: USER, to: 'bob@example.test', subject: 'via nodemailer 587', text: 'hello bob' });
    assert.match(info.response, /^250 /);
    const file = await waitFor('delivery to bob', () => deliveredWithSubject(inst, 'bob@example.test', 'via nodemailer 587')[0]);
    const text = fs.readFileSync(file, 'utf8');
    assert.match(text, /with ESMTPSA id [0-9A-F]{20}/);
    assert.match(text, /Subject: via nodemailer 587/);
  });

  it('nodemailer over 465 (implicit TLS) delivers to a local user with ESMTPSA in Received:', async () => {
    const t = nodemailer.createTransport({ host: '127.0.0.1', port: inst.ports.submissions, secure: true,
      auth: { user: USER, pass: PASS }, tls: { rejectUnauthorized: false } });
    const info = await t.sendMail({ from: USER, to: 'bob@example.test', subject: 'via 465', text: 'implicit tls' });
    const id = /^250 2\.0\.0 Ok: queued as ([0-9A-F]{20})/.exec(info.response)?.[1];
    assert.ok(id, `250 with a queue id: ${info.response}`);
    await inst.waitForLog(`the delivery of ${id}`, (e) => e.queue_id === id && e.status === 'sent', 30000);
    const files = deliveredWithSubject(inst, 'bob@example.test', 'via 465');
    assert.equal(files.length, 1, 'delivered exactly once');
    const text = fs.readFileSync(files[0], 'utf8');
    assert.match(text, new RegExp(`with ESMTPSA id ${id}\\r?\\n`), 'our Received: names the authenticated submission and its queue id');
    assert.match(text, /\r?\n\r?\nimplicit tls/, 'the body');
  });

  it('refuses a TLS version below 1.2 on 465: the server answers TLS 1.1 with a protocol_version alert', async () => {
    // control: the same client pinned to TLS 1.2 completes the handshake and gets the greeting
    const modern = await tlsAttempt(inst.ports.submissions, 'TLSv1.2');
    assert.equal(modern.error, undefined, `TLS 1.2 handshake: ${modern.error?.message}`);
    assert.equal(modern.protocol, 'TLSv1.2');
    assert.match(modern.greeting ?? '', /^220 /, 'the greeting over TLS 1.2');

    const old = await tlsAttempt(inst.ports.submissions, 'TLSv1.1');
    assert.ok(old.error, `a TLS 1.1 handshake must fail; it succeeded (${old.protocol}) with ${JSON.stringify(old.greeting)}`);
    // the alert the server sent, not the client's own "no protocols available"
    assert.equal(old.error.code, 'ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION', `${old.error.code}: ${old.error.message}`);
    assert.match(old.error.message, /tlsv1 alert protocol version/);
  });

  it('re-reads the certificate and key on reload (SIGHUP)', async () => {
    const cn = (port: number) => {
      const r = run('openssl', ['s_client', '-connect', `127.0.0.1:${port}`], { input: '' });
      return /subject=.*CN ?= ?([^\s,/]+)/.exec(r.stdout)?.[1];
    };
    assert.equal(cn(inst.ports.submissions), 'mx.example.test');
    const tls = path.join(inst.etc, 'tls');
    const r = run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=renewed.example.test',
      '-keyout', path.join(tls, 'key.pem.new'), '-out', path.join(tls, 'cert.pem.new')]);
    assert.equal(r.code, 0, r.stderr);
    fs.renameSync(path.join(tls, 'key.pem.new'), path.join(tls, 'key.pem'));
    fs.renameSync(path.join(tls, 'cert.pem.new'), path.join(tls, 'cert.pem'));
    inst.cli(['reload']);
    await waitFor('the renewed certificate served', () => cn(inst.ports.submissions) === 'renewed.example.test', 10000);
  });

  describe('every wrong way gets its code and queues nothing', () => {
    const before = () => inst.logs().filter((e) => e.msg === 'queued' && String(e.service).startsWith('cleanup')).length;

    it('wrong password → 535 5.7.8', () => {
      const n = before();
      const r = swaks(['--server', `127.0.0.1:${inst.ports.submission}`, '-tls', '--auth', 'PLAIN', '--auth-user', USER,
        '--auth-password', 'wrong', '--from', USER, '--to', 'someone@remote.test']);
      assert.match(r.out, /535 5\.7\.8/);
      assert.equal(before(), n);
    });

    it('MAIL without AUTH → 530 5.7.0', () => {
      const n = before();
      const r = swaks(['--server', `127.0.0.1:${inst.ports.submission}`, '-tls', '--from', USER, '--to', 'someone@remote.test']);
      assert.match(r.out, /530 5\.7\.0/);
      assert.equal(before(), n);
    });

    it('AUTH before STARTTLS → 530 5.7.0 and AUTH is not advertised', async () => {
      const c = await RawSmtp.connect(inst.ports.submission);
      const ehlo = await c.command('EHLO client.test');
      assert.doesNotMatch(ehlo, /AUTH/);
      assert.match(ehlo, /STARTTLS/);
      const auth = await c.command(`AUTH PLAIN ${Buffer.from(`\0${USER}\0${PASS}`).toString('base64')}`);
      assert.match(auth, /^530 5\.7\.0/);
      const mail = await c.command(`MAIL FROM:<${USER}>`);
      assert.match(mail, /^530 5\.7\.0/);
      c.close();
    });

    it('a forged sender → 553 5.7.1', () => {
      const n = before();
      const r = swaks(['--server', `127.0.0.1:${inst.ports.submission}`, '-tls', '--auth', 'PLAIN', '--auth-user', USER,
        '--auth-password', PASS, '--from', 'ceo@example.test', '--to', 'someone@remote.test']);
      assert.match(r.out, /553 5\.7\.1/);
      assert.equal(before(), n);
    });

    it('relay through port 25 without AUTH from outside mynetworks is still denied', async () => {
      const relayAttempt = async (): Promise<string> => {
        const c = await RawSmtp.connect(inst.ports.smtp);
        try {
          assert.match(c.greeting, /^220 /);
          assert.match(await c.command('EHLO client.test'), /^250[ -]/);
          assert.match(await c.command('MAIL FROM:<x@remote.test>'), /^250 /);
          return await c.command('RCPT TO:<y@elsewhere.test>');
        } finally { c.close(); }
      };
      const mainCf = path.join(inst.etc, 'main.cf');
      const saved = fs.readFileSync(mainCf);
      try {
        inst.cli(['config', 'set', 'mynetworks=10.255.255.0/24', 'smtpd_client_restrictions=permit_mynetworks']);
        await reloadAndWait(inst, inst.ports.smtp);
        assert.match(await relayAttempt(), /^554 5\.7\.1 /);
      } finally {
        fs.writeFileSync(mainCf, saved);
        await reloadAndWait(inst, inst.ports.smtp);
      }
      // control: with 127.0.0.1 in mynetworks again the same attempt may relay, so the 554 came from the setting
      assert.match(await relayAttempt(), /^250 /);
    });
  });
});
