/**
 * Dovecot SASL (issue 11, item 1): submission authenticates through Dovecot's
 * auth service, configured exactly as docs/dovecot.md says (the test reads the
 * blocks from the doc). A real Dovecot 2.3 (Debian 12) with its passdb, Postern
 * under its real accounts: the right password is accepted and the login name
 * Dovecot returns is the session's user; a wrong one gets 535; Dovecot stopped
 * gets 454 and never an accept; Dovecot back is used again without a restart;
 * inet:HOST:PORT works. Dovecot 2.4's order (the server waits for the client's
 * VERSION) and LOGIN-only servers are shown against a scripted auth server,
 * since Debian 12 ships only 2.3.
 */
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import nodemailer from 'nodemailer';
import { Instance, IS_ROOT, freePort, requireTool, runAsync, tempDir, waitFor } from './harness.js';
import { Dovecot, configFromDoc, docBlock, mainCfSettings, reloadAndWait, substitute } from './dovecot.js';

const USER = 'alice@example.test';
const PASS = 'dovecot knows this';

async function swaks(port: number, args: string[]): Promise<string> {
  const r = await runAsync(requireTool('swaks'), ['--timeout', '30', '--server', `127.0.0.1:${port}`, '-tls', ...args], '', 90000);
  return r.stdout + r.stderr;
}

/** AUTH PLAIN as `user` on 587, mail to bob: the transcript. */
function submit(inst: Instance, user: string, password: string, from = USER): Promise<string> {
  return swaks(inst.ports.submission, ['--auth', 'PLAIN', '--auth-user', user, '--auth-password', password,
    '--from', from, '--to', 'bob@example.test', '--header', 'Subject: via dovecot sasl']);
}

describe('Dovecot SASL: submission checks passwords with Dovecot (docs/dovecot.md)', () => {
  let inst: Instance;
  let dovecot: Dovecot | null = null;
  let tcpAuthPort = 0;
  const startDovecot = async () => {
    dovecot = await Dovecot.start({
      config: async (dir, imapPort) => configFromDoc({ etc: inst.etc, spool: inst.spool, dir, imapPort, imapsPort: await freePort(),
        extra: substitute(docBlock('dovecot-tcp.conf'), [['port = 24', `port = ${await freePort()}`], ['port = 12345', `port = ${tcpAuthPort}`]], 'dovecot-tcp.conf') }),
    });
  };

  before(async () => {
    assert.ok(IS_ROOT, 'this test runs Postern under its real accounts and Dovecot as root, as docs/dovecot.md sets them up: run it as root (CI does)');
    inst = await Instance.create({ unprivileged: false, users: [{ address: USER, password: PASS }, { address: 'bob@example.test' }] });
    inst.cli(['config', 'set', ...mainCfSettings(docBlock('main.cf'))]);
    await inst.start();
    tcpAuthPort = await freePort();
    await startDovecot();
  });
  after(async () => {
    await dovecot?.stop();
    await inst?.destroy();
  });

  it('the right password over AUTH PLAIN is accepted; Dovecot\'s login name is the session\'s user', async () => {
    // typed in capitals: Dovecot's auth_username_format (%Lu) answers with the name in lower case
    const out = await submit(inst, USER.toUpperCase(), PASS);
    assert.match(out, /235 2\.7\.0 Authentication successful/, out);
    assert.match(out, /250 2\.0\.0 Ok: queued as [0-9A-F]{20}/, `MAIL FROM:<${USER}> is owned by Dovecot's user ${USER}\n${out}`);
    const line = await inst.waitForLog('smtpd queued line with sasl_username', (e) => e.msg === 'queued' && e.sasl_username === USER);
    assert.ok(line.queue_id);
  });

  it('AUTH LOGIN (nodemailer) goes through Dovecot too', async () => {
    const t = nodemailer.createTransport({ host: '127.0.0.1', port: inst.ports.submission, secure: false, requireTLS: true,
      auth: { user: USER, pass: PASS, method: 'LOGIN' } as any, tls: { rejectUnauthorized: false } });
    try {
      const info = await t.sendMail({ from: USER, to: 'bob@example.test', subject: 'login via dovecot', text: 'hi' });
      const id = /^250 2\.0\.0 Ok: queued as ([0-9A-F]{20})/.exec(info.response)?.[1];
      assert.ok(id, info.response);
      // cleanup's log line reaches the log through master after the reply: wait for it, so the next test counts from here
      await inst.waitForLog(`cleanup's queued line for ${id}`, (e) => e.msg === 'queued' && e.service === 'cleanup' && e.queue_id === id);
    } finally { t.close(); }
  });

  it('a wrong password gets 535 5.7.8 and queues nothing', async () => {
    const queued = () => inst.logs().filter((e) => e.msg === 'queued' && e.service === 'cleanup').length;
    const n = queued();
    const out = await submit(inst, USER, 'not the password');
    assert.match(out, /535 5\.7\.8/, out);
    assert.doesNotMatch(out, /235 /);
    assert.equal(queued(), n);
  });

  it('Dovecot stopped: 454 4.7.0 Temporary authentication failure, never an accept; back again: accepted', async () => {
    await dovecot!.stop();
    dovecot = null;
    const down = await submit(inst, USER, PASS);
    assert.match(down, /454 4\.7\.0 Temporary authentication failure/, down);
    assert.doesNotMatch(down, /235 /);
    await inst.waitForLog('smtpd says Dovecot is unavailable', (e) => /Dovecot auth unavailable/.test(e.msg ?? ''));
    await startDovecot();
    const back = await submit(inst, USER, PASS);
    assert.match(back, /235 2\.7\.0/, `the same smtpd process reconnects to Dovecot\n${back}`);
  });

  it('smtpd_sasl_path = inet:HOST:PORT (docs/dovecot.md\'s TCP listener)', async () => {
    const settings = mainCfSettings(substitute(docBlock('main-tcp.cf'), [['12345', String(tcpAuthPort)]], 'main-tcp.cf'))
      .filter((s) => s.startsWith('smtpd_sasl_path='));
    assert.deepEqual(settings, [`smtpd_sasl_path=inet:127.0.0.1:${tcpAuthPort}`]);
    inst.cli(['config', 'set', ...settings]);
    // every smtpd listener drops its Unix-socket connection for the new path
    await reloadAndWait(inst, [new RegExp(`^smtpd\\[.*\\b${inst.ports.submission}\\]$`)]);
    // and the Unix socket is gone: only the TCP listener can answer now
    fs.rmSync(path.join(inst.spool, 'private', 'auth'));
    const out = await submit(inst, USER, PASS);
    assert.match(out, /235 2\.7\.0/, out);
    assert.match(await submit(inst, USER, 'wrong'), /535 5\.7\.8/);
  });
});

/** The login name the scripted server answers with: lower case, and a bare name in example.test (Dovecot's auth_default_realm). */
const canonical = (login: string) => (login.includes('@') ? login : `${login}@example.test`).toLowerCase();

/**
 * A scripted auth server for what Debian 12's Dovecot cannot show: 2.4's
 * order (nothing until the client's VERSION) and a server offering only LOGIN.
 * It records every line the client sends.
 */
class ScriptedAuthServer {
  readonly lines: string[] = [];
  private server: net.Server;
  private conns = new Set<net.Socket>();
  constructor(readonly socketPath: string, mechs: string[], password: string) {
    this.server = net.createServer((c) => {
      this.conns.add(c);
      c.on('close', () => this.conns.delete(c));
      c.setEncoding('utf8');
      let buf = '';
      let greeted = false;
      const login = new Map<string, string[]>();
      c.on('error', () => undefined);
      c.on('data', (d: string) => {
        buf += d;
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          this.lines.push(line);
          const f = line.split('\t');
          if (f[0] === 'VERSION' && !greeted) {
            greeted = true; // 2.4: the handshake only after the client's VERSION
            c.write(`VERSION\t1\t3\n${mechs.map((m) => `MECH\t${m}\tplaintext\n`).join('')}SPID\t1\nCUID\t7\nCOOKIE\t00\nDONE\n`);
          } else if (f[0] === 'AUTH') {
            const resp = f.find((a) => a.startsWith('resp='));
            if (f[2] === 'PLAIN' && resp) {
              const [, user, pass] = Buffer.from(resp.slice(5), 'base64').toString().split('\0');
              c.write(pass === password ? `OK\t${f[1]}\tuser=${canonical(user)}\n` : `FAIL\t${f[1]}\tuser=${user}\n`);
            } else if (f[2] === 'LOGIN') {
              login.set(f[1], []);
              c.write(`CONT\t${f[1]}\t${Buffer.from('Username:').toString('base64')}\n`);
            }
          } else if (f[0] === 'CONT') {
            const got = login.get(f[1])!;
            got.push(Buffer.from(f[2], 'base64').toString());
            if (got.length === 1) c.write(`CONT\t${f[1]}\t${Buffer.from('Password:').toString('base64')}\n`);
            else c.write(got[1] === password ? `OK\t${f[1]}\tuser=${canonical(got[0])}\n` : `FAIL\t${f[1]}\n`);
          }
        }
      });
    });
  }
  async listen(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(this.socketPath, r));
    fs.chmodSync(this.socketPath, 0o666); // smtpd runs as postern-smtpd
  }
  /** Stop listening and drop smtpd's kept connection (it reconnects for the next AUTH). */
  close(): Promise<void> {
    for (const c of this.conns) c.destroy();
    return new Promise((r) => this.server.close(() => r()));
  }
}

describe('the auth-client protocol against Dovecot 2.4\'s order and a LOGIN-only server', () => {
  let inst: Instance;
  let dir: string;
  before(async () => {
    assert.ok(IS_ROOT, 'this test runs Postern under its real accounts: run it as root (CI does)');
    inst = await Instance.create({ unprivileged: false, users: [{ address: USER, password: 'postern-side password' }, { address: 'bob@example.test' }] });
    dir = tempDir('auth24');
    inst.cli(['config', 'set', 'smtpd_sasl_type=dovecot', `smtpd_sasl_path=${dir}/auth`]);
    await inst.start();
  });
  after(async () => {
    await inst?.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('sends VERSION and CPID first, then AUTH with service, nologin, secured, addresses and the PLAIN response', async () => {
    const server = new ScriptedAuthServer(path.join(dir, 'auth'), ['PLAIN', 'LOGIN'], 'pw24');
    await server.listen();
    try {
      const out = await submit(inst, USER, 'pw24');
      assert.match(out, /235 2\.7\.0/, `${out}\nclient sent:\n${server.lines.join('\n')}`);
      assert.match(server.lines[0], /^VERSION\t1\t\d+$/);
      assert.match(server.lines[1], /^CPID\t\d+$/);
      const auth = server.lines.find((l) => l.startsWith('AUTH\t'))!.split('\t');
      assert.equal(auth[2], 'PLAIN');
      for (const p of ['service=smtp', 'nologin', 'secured', 'lip=127.0.0.1', 'rip=127.0.0.1', `lport=${inst.ports.submission}`]) assert.ok(auth.includes(p), `${p} in ${auth.join(' ')}`);
      assert.ok(auth.some((a) => /^rport=\d+$/.test(a)), auth.join(' '));
      assert.equal(Buffer.from(auth.find((a) => a.startsWith('resp='))!.slice(5), 'base64').toString(), `\0${USER}\0pw24`);
      // Postern's own table has another password: only the auth server decided
      assert.match(await submit(inst, USER, 'postern-side password'), /535 5\.7\.8/);
      // logged in as "Alice", Dovecot's name for her is alice@example.test: that name owns MAIL FROM and is logged
      const bare = await submit(inst, 'Alice', 'pw24');
      assert.match(bare, /250 2\.0\.0 Ok: queued as ([0-9A-F]{20})/, bare);
      const id = /queued as ([0-9A-F]{20})/.exec(bare)![1];
      await inst.waitForLog('the queued line with Dovecot\'s name', (e) => e.queue_id === id && e.msg === 'queued' && e.sasl_username === USER);
      assert.match(await submit(inst, 'Alice', 'pw24', 'alice@elsewhere.test'), /553 5\.7\.1/);
    } finally { await server.close(); }
  });

  it('runs LOGIN over CONT when the server offers only LOGIN', async () => {
    fs.rmSync(path.join(dir, 'auth'), { force: true });
    const server = new ScriptedAuthServer(path.join(dir, 'auth'), ['LOGIN'], 'pw-login');
    await server.listen();
    try {
      // the previous server went away: smtpd's connection to it is dead and a new one is opened
      const out = await waitFor('AUTH through the LOGIN-only server', async () => {
        const o = await submit(inst, USER, 'pw-login');
        return /235 2\.7\.0/.test(o) ? o : null;
      }, 30000, 500);
      assert.match(out, /250 2\.0\.0 Ok: queued/);
      const auth = server.lines.find((l) => l.startsWith('AUTH\t'))!.split('\t');
      assert.equal(auth[2], 'LOGIN');
      assert.ok(!auth.some((a) => a.startsWith('resp=')), 'LOGIN starts without an initial response');
      const conts = server.lines.filter((l) => l.startsWith('CONT\t')).map((l) => Buffer.from(l.split('\t')[2], 'base64').toString());
      assert.deepEqual(conts.slice(0, 2), [USER, 'pw-login']);
    } finally { await server.close(); }
  });
});
