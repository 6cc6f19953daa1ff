/**
 * Test harness: real Postern instances started as real processes through the
 * `postern` command, on loopback ports picked free for each test, torn down
 * after. Every wait is bounded.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as tls from 'node:tls';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, spawnSync, SpawnSyncOptions } from 'node:child_process';
import nodemailer from 'nodemailer';

export const ROOT = path.resolve(__dirname, '..', '..');
export const POSTERN = path.join(ROOT, 'bin', 'postern');
export const IS_ROOT = process.getuid?.() === 0;

export interface RunResult { code: number; stdout: string; stderr: string }

export function run(cmd: string, args: string[], opts: SpawnSyncOptions = {}): RunResult {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 120000, ...opts });
  return { code: r.status ?? -1, stdout: String(r.stdout ?? ''), stderr: String(r.stderr ?? '') };
}

/**
 * Like run(), without blocking this process: use it whenever the command needs
 * a server living in the test process (TestDnsServer, a test SMTP server).
 */
export function runAsync(cmd: string, args: string[], input: Buffer | string = '', timeoutMs = 60000): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.stdout.on('data', (d) => out.push(d));
    child.stderr.on('data', (d) => err.push(d));
    child.on('error', (e) => { clearTimeout(timer); reject(e); });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') });
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(input);
  });
}

export function postern(args: string[], opts: SpawnSyncOptions = {}): RunResult {
  return run(process.execPath, [POSTERN, ...args], opts);
}

/** A Debian tool the test needs: installed by `make test` (.ci/install-test-deps); missing is a failure, not a skip. */
export function requireTool(name: string): string {
  for (const dir of (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/sbin', '/usr/bin'])) {
    const p = path.join(dir, name);
    if (fs.existsSync(p)) return p;
  }
  throw new Error(`${name} is not installed: run "make test" (it installs the Debian packages the tests need)`);
}

/** Ports this test process has handed out: the kernel may offer a just-closed port again, and two services of one instance must not share one. */
const portsGiven = new Set<number>();

export async function freePort(host = '127.0.0.1'): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = await new Promise<number>((resolve, reject) => {
      const s = net.createServer();
      s.once('error', reject);
      s.listen(0, host, () => {
        const p = (s.address() as net.AddressInfo).port;
        s.close(() => resolve(p));
      });
    });
    if (portsGiven.has(port)) continue;
    portsGiven.add(port);
    return port;
  }
  throw new Error(`no port on ${host} that this test has not handed out already, after 50 tries`);
}

export async function waitFor<T>(what: string, fn: () => T | Promise<T>, timeoutMs = 15000, everyMs = 100): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v) return v as NonNullable<T>;
    } catch (e) { last = e; }
    await new Promise((r) => setTimeout(r, everyMs));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${(last as Error).message})` : ''}`);
}

export function tempDir(prefix: string): string {
  // world-traversable so services running under their own users reach their files
  const d = fs.mkdtempSync(path.join(os.tmpdir(), `postern-${prefix}-`));
  fs.chmodSync(d, 0o755);
  return d;
}

export interface InstanceOptions {
  /** Run as the invoking user (sandbox); default true. A root instance needs the test to run as root. */
  unprivileged?: boolean;
  hostname?: string;
  domain?: string;
  /** main.cf settings applied after init. */
  main?: Record<string, string>;
  users?: { address: string; password?: string; mailbox?: 'maildir' | 'mbox' }[];
}

export class Instance {
  readonly etc: string;
  private constructor(readonly dir: string, readonly ports: { smtp: number; submission: number; submissions: number },
    readonly domain: string) {
    this.etc = path.join(dir, 'etc');
  }

  static async create(o: InstanceOptions = {}): Promise<Instance> {
    const dir = tempDir('instance');
    const ports = { smtp: await freePort(), submission: await freePort(), submissions: await freePort() };
    const domain = o.domain ?? 'example.test';
    const args = ['init', dir, '--hostname', o.hostname ?? `mx.${domain}`, '--domain', domain,
      '--smtp-port', String(ports.smtp), '--submission-port', String(ports.submission), '--submissions-port', String(ports.submissions)];
    if (o.unprivileged !== false) args.push('--unprivileged');
    else args.push('--create-users');
    const r = postern(args);
    if (r.code !== 0) throw new Error(`postern init failed: ${r.stderr}`);
    const inst = new Instance(dir, ports, domain);
    // fast retries for tests; the defaults are Postfix's
    const settings = { minimal_backoff_time: '1s', maximal_backoff_time: '2s', queue_run_delay: '1s', ...o.main };
    inst.cli(['config', 'set', ...Object.entries(settings).map(([k, v]) => `${k}=${v}`)]);
    for (const u of o.users ?? []) {
      const a = ['user', 'add', u.address, '--password-stdin', '--mailbox', u.mailbox ?? 'maildir'];
      inst.cli(a, { input: `${u.password ?? 'secret'}\n` });
    }
    return inst;
  }

  /** Run `postern -c ETC ...`; throws on a non-zero exit. */
  cli(args: string[], opts: SpawnSyncOptions = {}): RunResult {
    const r = postern(['-c', this.etc, ...args], opts);
    if (r.code !== 0) throw new Error(`postern ${args.join(' ')} exited ${r.code}: ${r.stderr}${r.stdout}`);
    return r;
  }

  tryCli(args: string[], opts: SpawnSyncOptions = {}): RunResult {
    return postern(['-c', this.etc, ...args], opts);
  }

  async start(): Promise<void> {
    this.cli(['start']);
  }

  async stop(): Promise<void> {
    this.tryCli(['stop']);
  }

  /** Stop and remove everything the instance wrote. */
  async destroy(): Promise<void> {
    await this.stop();
    const pid = this.masterPid();
    if (pid) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  get spool(): string { return path.join(this.dir, 'spool'); }
  get logFile(): string { return path.join(this.dir, 'postern.log'); }

  masterPid(): number | null {
    try { return parseInt(fs.readFileSync(path.join(this.spool, 'pid', 'master.pid'), 'utf8'), 10); } catch { return null; }
  }

  status(): any {
    return JSON.parse(this.tryCli(['status', '--json']).stdout || '{}');
  }

  logs(): any[] {
    if (!fs.existsSync(this.logFile)) return [];
    return fs.readFileSync(this.logFile, 'utf8').split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
  }

  async waitForLog(what: string, pred: (e: any) => boolean, timeoutMs = 15000): Promise<any> {
    return waitFor(what, () => this.logs().find(pred), timeoutMs);
  }

  maildir(address: string): string {
    const [local, domain] = address.split('@');
    return path.join(this.dir, 'mail', domain, local, 'Maildir');
  }

  mbox(address: string): string {
    const [local, domain] = address.split('@');
    return path.join(this.dir, 'mail', domain, local, 'mbox');
  }

  /** Files in a user's Maildir new/. */
  delivered(address: string): string[] {
    const d = path.join(this.maildir(address), 'new');
    return fs.existsSync(d) ? fs.readdirSync(d).map((f) => path.join(d, f)) : [];
  }

  /** Queue files under one queue directory (deferred's hash directories included). */
  queued(queue: string): string[] {
    const d = path.join(this.spool, queue);
    if (!fs.existsSync(d)) return [];
    const out: string[] = [];
    for (const n of fs.readdirSync(d)) {
      const p = path.join(d, n);
      if (fs.statSync(p).isDirectory()) out.push(...fs.readdirSync(p).map((x) => path.join(p, x)));
      else out.push(p);
    }
    return out;
  }

  /**
   * Nothing in incoming/, active/ or deferred/, cleanup's temporary files
   * (incoming/.ID) included: a message half-received when a test ends, or litter
   * a killed cleanup left, is something the test must account for.
   */
  queueEmpty(): boolean {
    return ['incoming', 'active', 'deferred'].every((q) => this.queued(q).length === 0);
  }
}

/**
 * A raw SMTP conversation for what real clients refuse to send (bare LF, smuggling).
 * Sends each step, collects the server's complete reply to it.
 */
export class RawSmtp {
  private buf = '';
  private waiters: (() => void)[] = [];
  closed = false;
  private constructor(private sock: net.Socket) {
    this.attach(sock);
  }

  private attach(sock: net.Socket): void {
    sock.on('data', (d) => { this.buf += d.toString('latin1'); this.waiters.splice(0).forEach((w) => w()); });
    sock.on('close', () => { this.closed = true; this.waiters.splice(0).forEach((w) => w()); });
    sock.on('error', () => undefined);
  }

  /** STARTTLS, then the same conversation over TLS (the server's certificate is not checked); returns the 220. */
  async startTls(): Promise<string> {
    const ready = await this.command('STARTTLS');
    if (!/^220 /.test(ready)) throw new Error(`STARTTLS refused: ${ready}`);
    const plain = this.sock;
    plain.removeAllListeners('data');
    plain.removeAllListeners('close');
    const secure = tls.connect({ socket: plain, rejectUnauthorized: false });
    await new Promise<void>((res, rej) => { secure.once('secureConnect', res); secure.once('error', rej); });
    this.sock = secure;
    this.attach(secure);
    return ready;
  }

  static async connect(port: number, opts: { host?: string; localAddress?: string } = {}): Promise<RawSmtp> {
    const sock = net.createConnection({ port, host: opts.host ?? '127.0.0.1', localAddress: opts.localAddress });
    await new Promise<void>((res, rej) => { sock.once('connect', res); sock.once('error', rej); });
    const c = new RawSmtp(sock);
    c.greeting = await c.reply();
    return c;
  }

  /** The same over a Unix socket (an LMTP service such as `private/local`). */
  static async connectUnix(socketPath: string): Promise<RawSmtp> {
    const sock = net.createConnection(socketPath);
    await new Promise<void>((res, rej) => { sock.once('connect', res); sock.once('error', rej); });
    const c = new RawSmtp(sock);
    c.greeting = await c.reply();
    return c;
  }

  /** The same over implicit TLS (the submissions port); the server's certificate is not checked. */
  static async connectTls(port: number, opts: { host?: string } = {}): Promise<RawSmtp> {
    const sock = tls.connect({ port, host: opts.host ?? '127.0.0.1', rejectUnauthorized: false });
    await new Promise<void>((res, rej) => { sock.once('secureConnect', res); sock.once('error', rej); });
    const c = new RawSmtp(sock);
    c.greeting = await c.reply();
    return c;
  }

  /** The server's first reply: the 220 greeting, or a refusal such as 421. */
  greeting = '';

  /** The next complete reply (last line has a space after the code). */
  async reply(timeoutMs = 10000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = /^(?:\d{3}-[^\n]*\n)*\d{3}(?: [^\n]*)?\r?\n/.exec(this.buf);
      if (m) { this.buf = this.buf.slice(m[0].length); return m[0].trimEnd(); }
      if (this.closed) return '';
      if (Date.now() > deadline) throw new Error(`no SMTP reply within ${timeoutMs} ms (have: ${JSON.stringify(this.buf)})`);
      await new Promise<void>((r) => { this.waiters.push(r); setTimeout(r, 200); });
    }
  }

  async send(data: string | Buffer): Promise<void> {
    await new Promise<void>((r) => this.sock.write(data, () => r()));
  }

  async command(line: string): Promise<string> {
    await this.send(line + '\r\n');
    return this.reply();
  }

  close(): void { this.sock.destroy(); }
}

/** Sends a message through the instance's submission port (STARTTLS, AUTH as USER); returns its queue id. */
export async function submitAs(inst: Instance, user: string, pass: string, to: string, subject: string): Promise<string> {
  const t = nodemailer.createTransport({ host: '127.0.0.1', port: inst.ports.submission, secure: false, requireTLS: true,
    auth: { user, pass }, tls: { rejectUnauthorized: false } });
  const info = await t.sendMail({ from: user, to, subject, text: `body of ${subject}\n` });
  const m = /queued as ([0-9A-F]{20})/.exec(info.response);
  if (!m) throw new Error(`no queue id in the reply to DATA: ${info.response}`);
  return m[1];
}

/** Header fields of a message's header section, unfolded, names lower-case, in order. */
export function headerFields(text: string): { name: string; value: string }[] {
  const head = text.split(/\r?\n\r?\n/)[0];
  const out: { name: string; value: string }[] = [];
  for (const line of head.split(/\r?\n/)) {
    if (/^[ \t]/.test(line) && out.length) out[out.length - 1].value += ' ' + line.trim();
    else { const i = line.indexOf(':'); out.push({ name: line.slice(0, i).toLowerCase(), value: line.slice(i + 1).trim() }); }
  }
  return out;
}

/** The reply to RCPT TO:<to> in a fresh session from an outside sender (EHLO and MAIL must succeed). */
export async function rcptReply(port: number, to: string, host = '127.0.0.1'): Promise<string> {
  const c = await RawSmtp.connect(port, { host });
  try {
    if (!/^250/.test(await c.command('EHLO client.example.test'))) throw new Error('EHLO refused');
    const mail = await c.command('MAIL FROM:<someone@remote.test>');
    if (!/^250 /.test(mail)) throw new Error(`MAIL refused: ${mail}`);
    return await c.command(`RCPT TO:<${to}>`);
  } finally {
    await c.command('QUIT').catch(() => undefined);
  }
}
