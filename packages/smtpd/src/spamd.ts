/**
 * Spam filtering with SpamAssassin's spamd, spoken to in the spamc protocol
 * (SPAMC/1.5 `HEADERS`): once per message from outside, at the end of DATA.
 * spamd's `X-Spam-*` header fields are added in front of the message; a score
 * at or above spam_reject_score is refused with `550 5.7.1`.
 *
 * The message is held in memory up to spamd_max_size while it arrives, then
 * sent whole with its Content-length (spamd wants the length first, and scans
 * only once it has everything, so streaming it earlier would gain nothing);
 * a larger message is not sent at all, as spamc does. spamd being down, slow
 * (spamd_timeout), or answering nonsense is logged and the message passes:
 * spam filtering never costs a message.
 */
import * as net from 'node:net';
import { smtpError, headerSafe, rfc5322Date } from '@postern/common';
import type { CheckContext, MessageObserver, ObserverVerdict } from './observer.js';

export type SpamdAddress = { path: string } | { host: string; port: number };

const SPAMD_PORT = 783;

/** `host:port`, `[ipv6]:port`, `host` (port 783) or an absolute Unix socket path; null when it is none of these. */
export function parseSpamdAddress(text: string): SpamdAddress | null {
  const t = text.trim();
  if (t.startsWith('/')) return { path: t };
  const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(t) ?? (net.isIPv6(t) ? [t, t] : /^([A-Za-z0-9.-]+)(?::(\d+))?$/.exec(t));
  if (!m) return null;
  const port = m[2] ? parseInt(m[2], 10) : SPAMD_PORT;
  return port > 0 && port < 65536 ? { host: m[1], port } : null;
}

export function describeSpamdAddress(a: SpamdAddress): string {
  return 'path' in a ? a.path : net.isIPv6(a.host) ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

export interface SpamdVerdict {
  spam: boolean;
  score: number;
  /** spamd's own required_score. */
  threshold: number;
  /** spamd's X-Spam-* header fields, CRLF line endings, ready to prepend. */
  headers: string;
}

/** The X-Spam-* fields of a header section, folded lines kept together. */
export function spamHeaderFields(section: string): string {
  const fields: string[] = [];
  for (const line of section.split(/\r?\n/)) {
    if (line === '') break;
    if (/^[ \t]/.test(line)) { if (fields.length) fields[fields.length - 1] += `\r\n${line}`; continue; }
    fields.push(line);
  }
  return fields.filter((f) => /^X-Spam-[A-Za-z0-9-]*:/i.test(f))
    .map((f) => f.replace(/\0/g, '').replace(/\r(?!\n)/g, '') + '\r\n').join('');
}

/** Parse a complete spamd reply to HEADERS. Throws with what was wrong. */
export function parseSpamdReply(reply: Buffer): SpamdVerdict {
  const text = reply.toString('latin1');
  const headEnd = text.indexOf('\r\n\r\n');
  const head = (headEnd < 0 ? text : text.slice(0, headEnd)).split('\r\n');
  const status = /^SPAMD\/\d+\.\d+ (\d+) (.*)$/.exec(head[0] ?? '');
  if (!status) throw new Error(`unexpected reply "${headerSafe(head[0] ?? '').slice(0, 100)}"`);
  if (status[1] !== '0') throw new Error(`spamd said ${status[1]} ${status[2]}`);
  const spamLine = head.find((l) => /^Spam:/i.test(l));
  const m = spamLine && /^Spam:\s*(True|False|Yes|No)\s*;\s*(-?[\d.]+)\s*\/\s*(-?[\d.]+)/i.exec(spamLine);
  if (!m) throw new Error('reply has no Spam: line');
  const body = headEnd < 0 ? '' : reply.subarray(headEnd + 4).toString('utf8');
  return { spam: /^(true|yes)$/i.test(m[1]), score: parseFloat(m[2]), threshold: parseFloat(m[3]), headers: spamHeaderFields(body) };
}

/**
 * Ask spamd about one message (SPAMC/1.5 HEADERS). Resolves to its verdict;
 * rejects when spamd cannot be reached, answers an error, or takes longer
 * than timeoutMs in all.
 */
export function askSpamd(address: SpamdAddress, message: Buffer[], timeoutMs: number): Promise<SpamdVerdict> {
  const length = message.reduce((n, b) => n + b.length, 0);
  // spamd's answer is a header section: far smaller than the message; this only stops a runaway peer
  const replyLimit = length + 256 * 1024;
  return new Promise((resolve, reject) => {
    const sock = 'path' in address ? net.connect({ path: address.path }) : net.connect({ host: address.host, port: address.port });
    const got: Buffer[] = [];
    let size = 0;
    let done = false;
    const finish = (fn: () => void) => { if (done) return; done = true; clearTimeout(timer); sock.destroy(); fn(); };
    const timer = setTimeout(() => finish(() => reject(new Error(`no answer within ${timeoutMs / 1000} s`))), timeoutMs);
    sock.on('connect', () => {
      sock.write(`HEADERS SPAMC/1.5\r\nContent-length: ${length}\r\n\r\n`);
      for (const b of message) sock.write(b);
      sock.end();
    });
    sock.on('data', (d: Buffer) => {
      got.push(d);
      size += d.length;
      if (size > replyLimit) finish(() => reject(new Error('reply too large')));
    });
    sock.on('end', () => finish(() => {
      try { resolve(parseSpamdReply(Buffer.concat(got))); } catch (e) { reject(e); }
    }));
    sock.on('error', (e: NodeJS.ErrnoException) => finish(() => reject(new Error(e.code ?? e.message))));
  });
}

/** The Received: line spamd sees in front of the message, so its rules know the client (cleanup writes the real one). */
function receivedLine(c: CheckContext): string {
  const s = c.session;
  const name = s.clientHostname && !/^\[/.test(s.clientHostname) ? s.clientHostname : 'unknown';
  return `Received: from ${headerSafe(s.hostNameAppearsAs || name)} (${headerSafe(name)} [${s.remoteAddress}])\r\n`
    + `\tby ${c.config.get('myhostname')} (Postern) with ${s.transmissionType || 'SMTP'}; ${rfc5322Date()}\r\n`;
}

/** The spam check for one message; null when spamd_address is empty. */
export function createSpamCheck(c: CheckContext): MessageObserver | null {
  const { config, log, session } = c;
  const spec = config.get('spamd_address').trim();
  if (!spec) return null;
  const client = `${session.clientHostname && !/^\[/.test(session.clientHostname) ? session.clientHostname : 'unknown'}[${session.remoteAddress}]`;
  const from = `<${session.envelope.mailFrom ? session.envelope.mailFrom.address : ''}>`;
  const address = parseSpamdAddress(spec);
  if (!address) {
    log.error({ spamd_address: spec }, 'spamd_address is not host:port, [ipv6]:port or a socket path; spam check skipped');
    return null;
  }
  const maxSize = config.int('spamd_max_size');
  const rejectScore = config.int('spam_reject_score');
  const timeoutMs = config.seconds('spamd_timeout') * 1000;
  let chunks: Buffer[] = [Buffer.from(receivedLine(c))];
  let size = 0;
  let tooBig = false;

  return {
    write(chunk) {
      if (tooBig) return;
      size += chunk.length;
      if (size > maxSize) { tooBig = true; chunks = []; return; }
      chunks.push(chunk);
    },

    async finish(): Promise<ObserverVerdict> {
      if (tooBig) {
        log.info({ client, from, size, spamd_max_size: maxSize }, 'spam check skipped: message larger than spamd_max_size');
        return {};
      }
      const started = Date.now();
      let v: SpamdVerdict;
      try {
        v = await askSpamd(address, chunks, timeoutMs);
      } catch (e) {
        log.warn({ client, from, spamd: describeSpamdAddress(address), err: (e as Error).message }, 'spamd unavailable; message passes unchecked');
        return {};
      } finally {
        chunks = [];
      }
      const rejected = rejectScore > 0 && v.score >= rejectScore;
      log.info({ client, from, score: v.score, required: v.threshold, spam: v.spam, spam_reject_score: rejectScore,
        action: rejected ? 'reject' : 'accept', ms: Date.now() - started },
      `spam check: score ${v.score}${rejected ? ` >= spam_reject_score ${rejectScore}: rejected` : ''}`);
      if (rejected) return { reject: smtpError(550, '5.7.1', 'Message rejected as spam') };
      return { headers: v.headers };
    },

    abort() { chunks = []; tooBig = true; },
  };
}
