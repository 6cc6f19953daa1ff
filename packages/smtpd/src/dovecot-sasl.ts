/**
 * AUTH through Dovecot's auth service (`smtpd_sasl_type = dovecot`), as
 * Postfix's xsasl_dovecot_server does: Dovecot's auth-client protocol (a line
 * protocol, TAB-separated, Dovecot's \001 escaping) over a Unix socket or TCP.
 *
 *   C: VERSION 1 2 / CPID pid            sent at connect, before reading: Dovecot 2.4
 *                                        waits for the client's VERSION, 2.3 does not mind
 *   S: VERSION 1 x / MECH name flags... / SPID / CUID / COOKIE / DONE
 *   C: AUTH id mech service=smtp nologin lip= rip= lport= rport= [secured] [resp=base64]
 *   S: CONT id base64  |  OK id user=NAME ...  |  FAIL id [user=] [reason=] [temp | code=temp_fail]
 *
 * One connection per smtpd process carries every AUTH (each with its own id);
 * it is opened at the first AUTH and again after a loss. Everything is
 * bounded: line length, requests in flight, the time to connect and to answer.
 * Dovecot unreachable or failing is a temporary failure (454), never an accept.
 */
import * as net from 'node:net';
import * as path from 'node:path';

/** Dovecot's own limit for an auth-client line (AUTH_CLIENT_MAX_LINE_LENGTH); longer is a protocol error. */
const MAX_LINE = 16384;
/** AUTH requests waiting for Dovecot's answer on the connection; beyond that, a temporary failure. */
const MAX_PENDING = 1000;
const CONNECT_TIMEOUT_MS = 10000;
/** Dovecot delays a failure by auth_failure_delay (2 s) and may ask a password database over the network. */
const REQUEST_TIMEOUT_MS = 30000;

/** Dovecot could not be asked (down, refused, timed out, spoke nonsense, said "temporary failure"). */
export class SaslUnavailable extends Error {}

export interface SaslCredentials {
  mechanism: 'PLAIN' | 'LOGIN';
  /** PLAIN's authorization identity when the client gave one different from the login name. */
  authzid?: string;
  username: string;
  password: string;
}

export interface SaslClientInfo {
  /** The client's TLS is on (`secured`: Dovecot lets plaintext mechanisms through). */
  secured: boolean;
  localAddress: string;
  localPort: number;
  remoteAddress: string;
  remotePort: number;
}

/** OK with the login name Dovecot settled on, or a failure with Dovecot's reason (for the log). */
export type SaslResult = { ok: true; user: string } | { ok: false; reason: string };

/** Dovecot's tab-escaping: \001 then 1 (itself), t (TAB), r (CR), n (LF), 0 (NUL). */
export function tabEscape(s: string): string {
  return s.replace(/[\x01\t\r\n\0]/g, (c) => `\x01${({ '\x01': '1', '\t': 't', '\r': 'r', '\n': 'n', '\0': '0' } as Record<string, string>)[c]}`);
}

export function tabUnescape(s: string): string {
  // Dovecot 2.3's doc says "l" for LF where the code writes "n": accept both; anything else stands for itself
  return s.replace(/\x01(.)/gs, (_m, c: string) => ({ '1': '\x01', t: '\t', r: '\r', n: '\n', l: '\n', '0': '\0' } as Record<string, string>)[c] ?? c);
}

interface Pending {
  creds: SaslCredentials;
  /** The mechanism sent to Dovecot (PLAIN carries LOGIN's credentials too). */
  mech: 'PLAIN' | 'LOGIN';
  /** LOGIN over CONT: how many challenges answered so far. */
  step: number;
  timer: NodeJS.Timeout;
  resolve: (r: SaslResult) => void;
  reject: (e: Error) => void;
}

/** `inet:HOST:PORT` (`[v6]:PORT`) or a Unix socket path (relative to the queue directory, as Postfix). */
export function parseSaslPath(spec: string, queueDirectory: string): { host: string; port: number } | { path: string } {
  const m = /^inet:(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(spec);
  if (m) return { host: m[1] ?? m[2], port: parseInt(m[3], 10) };
  if (spec.startsWith('inet:')) throw new Error(`smtpd_sasl_path: "${spec}" is not inet:HOST:PORT`);
  return { path: path.resolve(queueDirectory, spec) };
}

class Connection {
  private buf = '';
  private handshakeDone = false;
  readonly mechanisms = new Set<string>();
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  dead: Error | null = null;
  readonly ready: Promise<void>;
  private readyResolve!: () => void;
  private readyReject!: (e: Error) => void;

  constructor(private readonly sock: net.Socket, private readonly where: string) {
    this.ready = new Promise((res, rej) => { this.readyResolve = res; this.readyReject = rej; });
    this.ready.catch(() => undefined);
    const timer = setTimeout(() => this.fail(new SaslUnavailable(`${where}: no handshake within ${CONNECT_TIMEOUT_MS} ms`)), CONNECT_TIMEOUT_MS);
    this.ready.then(() => clearTimeout(timer), () => clearTimeout(timer));
    sock.setEncoding('utf8');
    sock.on('connect', () => sock.write(`VERSION\t1\t2\nCPID\t${process.pid}\n`));
    sock.on('data', (d: string) => this.onData(d));
    sock.on('error', (e) => this.fail(new SaslUnavailable(`${where}: ${e.message}`)));
    sock.on('close', () => this.fail(new SaslUnavailable(`${where}: connection closed`)));
  }

  private onData(d: string): void {
    this.buf += d;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl);
      this.buf = this.buf.slice(nl + 1);
      this.onLine(line);
      if (this.dead) return;
    }
    if (this.buf.length > MAX_LINE) this.fail(new SaslUnavailable(`${this.where}: a line longer than ${MAX_LINE} bytes`));
  }

  private onLine(line: string): void {
    const f = line.split('\t');
    if (!this.handshakeDone) {
      switch (f[0]) {
        case 'VERSION':
          if (f[1] !== '1') this.fail(new SaslUnavailable(`${this.where}: auth protocol version ${f[1]} (want 1)`));
          return;
        case 'MECH':
          // "private" mechanisms are Dovecot-internal, never offered to clients
          if (f[1] && !f.slice(2).includes('private')) this.mechanisms.add(f[1].toUpperCase());
          return;
        case 'DONE':
          this.handshakeDone = true;
          this.readyResolve();
          return;
        default:
          return; // SPID, CUID, COOKIE: for master logins, which smtpd never makes
      }
    }
    const id = Number(f[1]);
    const p = this.pending.get(id);
    if (!p) return; // an answer to a request that timed out
    const params = new Map<string, string>();
    for (const a of f.slice(2)) {
      const eq = a.indexOf('=');
      params.set(eq < 0 ? a : a.slice(0, eq), eq < 0 ? '' : tabUnescape(a.slice(eq + 1)));
    }
    switch (f[0]) {
      case 'OK': {
        this.finish(id);
        const user = params.get('user') || p.creds.username;
        if (/[\0-\x1f\x7f]/.test(user)) return p.reject(new SaslUnavailable(`${this.where}: OK with a control character in user=`));
        return p.resolve({ ok: true, user });
      }
      case 'FAIL':
        this.finish(id);
        if (params.has('temp') || params.get('code') === 'temp_fail') {
          return p.reject(new SaslUnavailable(`${this.where}: temporary failure${params.get('reason') ? `: ${params.get('reason')}` : ''}`));
        }
        return p.resolve({ ok: false, reason: params.get('reason') || params.get('code') || 'authentication failed' });
      case 'CONT': {
        // only LOGIN asks: first for the user name, then for the password
        if (p.mech !== 'LOGIN' || p.step >= 2) {
          this.sock.write(`CANCEL\t${id}\n`);
          this.finish(id);
          return p.resolve({ ok: false, reason: 'unexpected challenge' });
        }
        const answer = p.step === 0 ? p.creds.username : p.creds.password;
        p.step++;
        this.sock.write(`CONT\t${id}\t${Buffer.from(answer, 'utf8').toString('base64')}\n`);
        return;
      }
      default:
        this.fail(new SaslUnavailable(`${this.where}: unexpected "${f[0].slice(0, 40)}"`));
    }
  }

  private finish(id: number): void {
    const p = this.pending.get(id);
    if (p) clearTimeout(p.timer);
    this.pending.delete(id);
  }

  async auth(creds: SaslCredentials, client: SaslClientInfo): Promise<SaslResult> {
    await this.ready;
    if (this.dead) throw this.dead;
    if (this.pending.size >= MAX_PENDING) throw new SaslUnavailable(`${this.where}: ${MAX_PENDING} requests already waiting`);
    // PLAIN when Dovecot offers it (one round trip, LOGIN's credentials fit it too); otherwise LOGIN over CONT
    const mech = this.mechanisms.has('PLAIN') ? 'PLAIN' : this.mechanisms.has('LOGIN') ? 'LOGIN' : null;
    if (!mech) throw new SaslUnavailable(`${this.where}: Dovecot offers neither PLAIN nor LOGIN (auth_mechanisms)`);
    const id = this.nextId;
    this.nextId = this.nextId >= 0xffffffff ? 1 : this.nextId + 1;
    const args = [
      'AUTH', String(id), mech, 'service=smtp', 'nologin',
      `lip=${tabEscape(client.localAddress)}`, `rip=${tabEscape(client.remoteAddress)}`,
      `lport=${client.localPort}`, `rport=${client.remotePort}`,
      ...(client.secured ? ['secured'] : []),
    ];
    if (mech === 'PLAIN') {
      const message = `${creds.authzid ?? ''}\0${creds.username}\0${creds.password}`;
      args.push(`resp=${Buffer.from(message, 'utf8').toString('base64')}`);
    }
    const line = args.join('\t') + '\n';
    if (line.length > MAX_LINE) return { ok: false, reason: 'credentials too long' };
    return new Promise<SaslResult>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new SaslUnavailable(`${this.where}: no answer within ${REQUEST_TIMEOUT_MS} ms`));
      }, REQUEST_TIMEOUT_MS);
      this.pending.set(id, { creds, mech, step: 0, timer, resolve, reject });
      this.sock.write(line);
    });
  }

  fail(e: Error): void {
    if (this.dead) return;
    this.dead = e;
    this.readyReject(e);
    this.sock.destroy();
    for (const [id, p] of this.pending) { clearTimeout(p.timer); this.pending.delete(id); p.reject(e); }
  }
}

export class DovecotSaslClient {
  private conn: Connection | null = null;

  /** `spec` as smtpd_sasl_path says it; relative socket paths are under `queueDirectory`. */
  constructor(readonly spec: string, private readonly queueDirectory: string) {
    parseSaslPath(spec, queueDirectory); // a bad inet: value fails at start, not at the first AUTH
  }

  private connection(): Connection {
    if (this.conn && !this.conn.dead) return this.conn;
    const target = parseSaslPath(this.spec, this.queueDirectory);
    const sock = 'path' in target ? net.createConnection(target.path) : net.createConnection({ host: target.host, port: target.port });
    this.conn = new Connection(sock, `dovecot auth ${this.spec}`);
    return this.conn;
  }

  /** Dovecot's verdict; throws SaslUnavailable when it cannot give one. */
  async authenticate(creds: SaslCredentials, client: SaslClientInfo): Promise<SaslResult> {
    return this.connection().auth(creds, client);
  }

  close(): void {
    this.conn?.fail(new SaslUnavailable('closed'));
    this.conn = null;
  }
}

/** smtp-server's view of an AUTH: what onAuth receives. */
interface SmtpAuth { method: string; username?: string | null; password?: string | null; authzid?: string | null }
interface SmtpSession { secure?: boolean; localAddress: string; localPort: number; remoteAddress: string; remotePort: number }

/**
 * The client for this listener's configuration: null unless smtpd_sasl_type is
 * dovecot; the previous one kept across a reload when the path is unchanged.
 */
export function dovecotSaslFor(config: { get(name: string): string }, previous: DovecotSaslClient | null): DovecotSaslClient | null {
  const wanted = config.get('smtpd_sasl_type') === 'dovecot' ? config.get('smtpd_sasl_path') : null;
  if (previous && previous.spec === wanted) return previous;
  previous?.close();
  return wanted === null ? null : new DovecotSaslClient(wanted, config.get('queue_directory'));
}

/** Ask Dovecot about a PLAIN or LOGIN exchange smtp-server has collected. Throws SaslUnavailable. */
export function dovecotCheck(client: DovecotSaslClient, auth: SmtpAuth, session: SmtpSession): Promise<SaslResult> {
  const username = auth.username ?? '';
  return client.authenticate({
    mechanism: auth.method === 'LOGIN' ? 'LOGIN' : 'PLAIN',
    // PLAIN's authzid goes along only when it says something (smtp-server falls back to it for an empty authcid)
    authzid: auth.method === 'PLAIN' && auth.authzid && auth.authzid !== username ? auth.authzid : undefined,
    username,
    password: auth.password ?? '',
  }, {
    secured: !!session.secure,
    localAddress: session.localAddress, localPort: session.localPort,
    remoteAddress: session.remoteAddress, remotePort: session.remotePort,
  });
}
