/**
 * A small IMAP4rev1 client for tests (RFC 3501): tagged commands, untagged
 * responses collected per command, and `{n}` literals read as raw bytes, so a
 * message fetched with BODY.PEEK[] comes back byte for byte. Every wait is
 * bounded.
 */
import * as net from 'node:net';

/** One server response: its text with literals left as `{n}` markers, and the literals' bytes in order. */
export interface ImapResponse {
  text: string;
  literals: Buffer[];
}

export interface TaggedResult {
  status: 'OK' | 'NO' | 'BAD';
  text: string;
  untagged: ImapResponse[];
}

const CRLF = Buffer.from('\r\n');

/** An IMAP quoted string (RFC 3501 section 4.3); enough for user names and passwords. */
export function imapQuote(s: string): string {
  if (/[\r\n\0]/.test(s)) throw new Error('a quoted string cannot hold CR, LF or NUL');
  return `"${s.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

export class ImapClient {
  private buf = Buffer.alloc(0);
  private responses: ImapResponse[] = [];
  private waiters: (() => void)[] = [];
  private closed = false;
  private nextTag = 1;
  /** The greeting's text (`* OK ...`). */
  greeting = '';

  private constructor(private readonly sock: net.Socket, private readonly timeoutMs: number) {
    sock.on('data', (d: Buffer) => { this.buf = Buffer.concat([this.buf, d]); this.parse(); this.wake(); });
    sock.on('close', () => { this.closed = true; this.wake(); });
    sock.on('error', () => undefined);
  }

  static async connect(port: number, host = '127.0.0.1', timeoutMs = 10000): Promise<ImapClient> {
    const sock = net.createConnection({ port, host });
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => { sock.destroy(); reject(new Error(`IMAP connect to ${host}:${port} timed out`)); }, timeoutMs);
      sock.once('connect', () => { clearTimeout(t); resolve(); });
      sock.once('error', (e) => { clearTimeout(t); reject(e); });
    });
    const c = new ImapClient(sock, timeoutMs);
    // Dovecot may say "* OK Waiting for authentication process" before the real greeting.
    for (;;) {
      const r = await c.nextResponse();
      if (!/^\* (OK|PREAUTH|BYE)\b/.test(r.text)) throw new Error(`unexpected IMAP greeting: ${r.text}`);
      if (/^\* BYE\b/.test(r.text)) throw new Error(`IMAP server refused the connection: ${r.text}`);
      if (!/Waiting for authentication/i.test(r.text)) { c.greeting = r.text; return c; }
    }
  }

  private wake(): void { this.waiters.splice(0).forEach((w) => w()); }

  /** Split the buffer into complete responses: a line ending in `{n}` continues after n literal bytes. */
  private parse(): void {
    for (;;) {
      let pos = 0;
      let text = '';
      const literals: Buffer[] = [];
      let complete = false;
      for (;;) {
        const eol = this.buf.indexOf(CRLF, pos);
        if (eol < 0) break;
        const line = this.buf.subarray(pos, eol).toString('utf8');
        text += line;
        pos = eol + 2;
        const lit = /\{(\d+)\+?\}$/.exec(line);
        if (!lit) { complete = true; break; }
        const n = parseInt(lit[1], 10);
        if (this.buf.length < pos + n) break;
        literals.push(Buffer.from(this.buf.subarray(pos, pos + n)));
        pos += n;
      }
      if (!complete) return;
      this.buf = this.buf.subarray(pos);
      this.responses.push({ text, literals });
    }
  }

  private async nextResponse(): Promise<ImapResponse> {
    const deadline = Date.now() + this.timeoutMs;
    for (;;) {
      const r = this.responses.shift();
      if (r) return r;
      if (this.closed) throw new Error('IMAP connection closed');
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no IMAP response within ${this.timeoutMs} ms`);
      await new Promise<void>((resolve) => { this.waiters.push(resolve); setTimeout(resolve, Math.min(left, 200)); });
    }
  }

  /** Send one command (without tag); resolve with its tagged result and the untagged responses before it. */
  async command(cmd: string): Promise<TaggedResult> {
    const tag = `t${this.nextTag++}`;
    this.sock.write(`${tag} ${cmd}\r\n`);
    const untagged: ImapResponse[] = [];
    for (;;) {
      const r = await this.nextResponse();
      if (r.text.startsWith(`${tag} `)) {
        const m = /^\S+ (OK|NO|BAD)\b ?(.*)$/.exec(r.text);
        if (!m) throw new Error(`malformed tagged response: ${r.text}`);
        return { status: m[1] as TaggedResult['status'], text: m[2], untagged };
      }
      untagged.push(r);
    }
  }

  /** A command that must succeed. */
  async ok(cmd: string): Promise<TaggedResult> {
    const r = await this.command(cmd);
    if (r.status !== 'OK') throw new Error(`IMAP ${cmd.split(' ')[0]} failed: ${r.status} ${r.text}`);
    return r;
  }

  async login(user: string, password: string): Promise<void> {
    await this.ok(`LOGIN ${imapQuote(user)} ${imapQuote(password)}`);
  }

  /** SELECT a mailbox; returns its EXISTS count. */
  async select(mailbox: string): Promise<number> {
    const r = await this.ok(`SELECT ${imapQuote(mailbox)}`);
    const exists = r.untagged.map((u) => /^\* (\d+) EXISTS$/.exec(u.text)).find(Boolean);
    if (!exists) throw new Error(`SELECT ${mailbox}: no EXISTS in the response`);
    return parseInt(exists[1], 10);
  }

  /** FETCH n (RFC822.SIZE BODY.PEEK[]): the size the server states and the bytes it sends. */
  async fetchMessage(seq: number): Promise<{ size: number; body: Buffer }> {
    const r = await this.ok(`FETCH ${seq} (RFC822.SIZE BODY.PEEK[])`);
    const f = r.untagged.find((u) => new RegExp(`^\\* ${seq} FETCH `).test(u.text));
    if (!f) throw new Error(`FETCH ${seq}: no FETCH response`);
    const size = /RFC822\.SIZE (\d+)/.exec(f.text);
    const at = f.text.indexOf('BODY[] {');
    if (!size || at < 0) throw new Error(`FETCH ${seq}: missing RFC822.SIZE or BODY[] in ${f.text}`);
    // which literal belongs to BODY[]: the number of literals that precede it
    const index = (f.text.slice(0, at).match(/\{\d+\+?\}/g) ?? []).length;
    return { size: parseInt(size[1], 10), body: f.literals[index] };
  }

  async logout(): Promise<void> {
    try { await this.command('LOGOUT'); } catch { /* the server may close first */ }
    this.sock.destroy();
  }

  close(): void { this.sock.destroy(); }
}
