/**
 * Submission (issue 3, item 1): 587 with STARTTLS and 465 with implicit TLS,
 * AUTH PLAIN/LOGIN only after TLS, the replies for every way to get it wrong,
 * and nothing queued for any of them. Real clients: swaks and nodemailer.
 */
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import nodemailer from 'nodemailer';
import { Instance, run, requireTool, waitFor, RawSmtp } from './harness.js';

const USER = 'alice@example.test';
const PASS = 'correct horse';

function swaks(args: string[]): { code: number; out: string } {
  const r = run(requireTool('swaks'), ['--timeout', '20', ...args]);
  return { code: r.code, out: r.stdout + r.stderr };
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
    const file = await waitFor('delivery to bob', () => inst.delivered('bob@example.test')[0]);
    const text = fs.readFileSync(file, 'utf8');
    assert.match(text, /with ESMTPSA id [0-9A-F]{20}/);
    assert.match(text, /Subject: via nodemailer 587/);
  });

  it('nodemailer over 465 (implicit TLS) is accepted', async () => {
    const t = nodemailer.createTransport({ host: '127.0.0.1', port: inst.ports.submissions, secure: true,
      auth: { user: USER, pass: PASS }, tls: { rejectUnauthorized: false } });
    const info = await t.sendMail({ from: USER, to: 'bob@example.test', subject: 'via 465', text: 'implicit tls' });
    assert.match(info.response, /^250 2\.0\.0 Ok: queued as/);
  });

  it('refuses a TLS version below 1.2 on 465', async () => {
    const r = run('openssl', ['s_client', '-connect', `127.0.0.1:${inst.ports.submissions}`, '-tls1_1'], { input: '' });
    assert.doesNotMatch(r.stdout, /^220 /m);
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
      inst.cli(['config', 'set', 'mynetworks=10.255.255.0/24', 'smtpd_client_restrictions=permit_mynetworks']);
      inst.cli(['reload']);
      await new Promise((r) => setTimeout(r, 1500));
      const c = await RawSmtp.connect(inst.ports.smtp);
      await c.command('EHLO client.test');
      await c.command('MAIL FROM:<x@remote.test>');
      assert.match(await c.command('RCPT TO:<y@elsewhere.test>'), /^554 5\.7\.1/);
      c.close();
      inst.cli(['config', 'set', 'mynetworks=127.0.0.0/8, [::1]/128', 'smtpd_client_restrictions=permit_mynetworks, permit_sasl_authenticated, reject_unknown_reverse_client_hostname']);
      inst.cli(['reload']);
    });
  });
});
