/**
 * `postern queue show ID` (postcat -q): the envelope, each recipient's state
 * and the message as it will be delivered (prepended headers, then the stored
 * bytes), read from the spool and streamed, never held whole.
 */
import { Readable, Writable } from 'node:stream';
import {
  Spool, QueueName, QueueFileInfo, readQueueFile, openMessage, recipientStates, attemptCount, CorruptQueueFile,
} from '@postern/common';

const SHOWN: QueueName[] = ['incoming', 'active', 'deferred', 'hold', 'corrupt'];

export interface ShowParts { envelope: boolean; headers: boolean; body: boolean }

/** Where a message is and its parsed file; a file moved between look and read is looked for again. */
async function locateAndRead(spool: Spool, id: string): Promise<{ queue: QueueName; info: QueueFileInfo } | null> {
  for (let round = 0; round < 3; round++) {
    for (const queue of SHOWN) {
      try {
        return { queue, info: await readQueueFile(spool.pathOf(queue, id)) };
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue;
        throw e;
      }
    }
  }
  return null;
}

function ctime(ms: number): string {
  return new Date(ms).toString().replace(/ GMT.*$/, '');
}

function envelopeFields(queue: QueueName, info: QueueFileInfo): Record<string, unknown> {
  const env = info.envelope;
  return {
    queue_id: env.id, queue_name: queue, arrival_time: Math.floor(env.arrival / 1000), message_size: info.messageLength + info.prepend.length,
    sender: env.sender, origin: env.origin, client: env.client, protocol: env.protocol, tls: env.tls, sasl: env.sasl,
    uid: env.uid, user: env.user, dsn: env.dsn, auth: env.auth,
    attempts: attemptCount(info), forced_expire: info.statuses.some((s) => s.type === 'flags' && !!s.expire),
    recipients: recipientStates(info).map((r) => ({
      address: r.address, orcpt: env.recipients[r.index].orcpt, notify: env.recipients[r.index].notify,
      status: r.status, dsn: r.dsn, reason: r.reason,
    })),
  };
}

function envelopeText(queue: QueueName, info: QueueFileInfo): string {
  const f = envelopeFields(queue, info) as any;
  const env = info.envelope;
  const lines = [
    `message_size: ${f.message_size}`,
    `message_arrival_time: ${ctime(env.arrival)}`,
    `sender: ${env.sender}`,
    `origin: ${env.origin}`,
  ];
  if (env.client) lines.push(`client: ${env.client.name}[${env.client.address}] helo=${env.client.helo}`);
  if (env.protocol) lines.push(`protocol: ${env.protocol}`);
  if (env.tls) lines.push(`tls: ${env.tls}`);
  if (env.sasl) lines.push(`sasl_username: ${env.sasl}`);
  if (env.uid !== undefined) lines.push(`uid: ${env.uid}${env.user ? ` (${env.user})` : ''}`);
  if (env.dsn?.ret) lines.push(`dsn_ret: ${env.dsn.ret}`);
  if (env.dsn?.envid) lines.push(`dsn_envid: ${env.dsn.envid}`);
  if (env.auth) lines.push(`auth: ${Object.entries(env.auth).map(([k, v]) => `${k}=${v}`).join(' ')}`);
  lines.push(`attempts: ${f.attempts}`);
  if (f.forced_expire) lines.push('forced_expire: yes');
  for (const r of f.recipients) {
    if (r.orcpt && r.orcpt !== r.address) lines.push(`original_recipient: ${r.orcpt}`);
    lines.push(`recipient: ${r.address} status=${r.status}${r.dsn ? ` dsn=${r.dsn}` : ''}${r.reason ? ` (${r.reason})` : ''}`);
  }
  return lines.join('\n') + '\n';
}

/**
 * The message split at the end of its header section, as two streams of
 * chunks: the header section (blank line included) and the body. Only the
 * header section is buffered, and at most `cap` bytes of it.
 */
async function* splitAtBody(message: Readable, cap = 1024 * 1024): AsyncGenerator<{ part: 'headers' | 'body'; data: Buffer }> {
  let head = Buffer.alloc(0);
  let inHeaders = true;
  for await (const c of message) {
    const chunk = c as Buffer;
    if (!inHeaders) { yield { part: 'body', data: chunk }; continue; }
    head = Buffer.concat([head, chunk]);
    const m = /\r?\n\r?\n/.exec(head.toString('latin1'));
    if (m || head.length >= cap) {
      const end = m ? m.index + m[0].length : head.length;
      yield { part: 'headers', data: head.subarray(0, end) };
      if (end < head.length) yield { part: 'body', data: head.subarray(end) };
      inHeaders = false;
    }
  }
  if (inHeaders && head.length) yield { part: 'headers', data: head };
}

/** CRLF to LF across chunk boundaries, for reading on a terminal as postcat does. */
function toLf(): (chunk: Buffer) => Buffer {
  let carry = false;
  return (chunk) => {
    let s = (carry ? '\r' : '') + chunk.toString('latin1');
    carry = s.endsWith('\r');
    if (carry) s = s.slice(0, -1);
    return Buffer.from(s.replace(/\r\n/g, '\n'), 'latin1');
  };
}

function write(out: Writable, data: Buffer | string): Promise<void> {
  return new Promise((resolve, reject) => out.write(data, (e) => (e ? reject(e) : resolve())));
}

/** Prints the message; false when no queue holds it. */
export async function showMessage(spool: Spool, id: string, parts: ShowParts, json: boolean, out: Writable): Promise<boolean> {
  let found: { queue: QueueName; info: QueueFileInfo } | null;
  try { found = await locateAndRead(spool, id); } catch (e) {
    if (e instanceof CorruptQueueFile) throw new Error(`${id}: ${e.message}`);
    throw e;
  }
  if (!found) return false;
  const { queue, info } = found;
  const where = `${queue}/${id}`;
  if (json) {
    const obj: Record<string, unknown> = parts.envelope ? envelopeFields(queue, info) : { queue_id: id, queue_name: queue };
    if (parts.headers || parts.body) {
      const text: Record<'headers' | 'body', Buffer[]> = { headers: [], body: [] };
      for await (const p of splitAtBody(openMessage(info))) text[p.part].push(p.data);
      if (parts.headers) obj.headers = Buffer.concat(text.headers).toString('utf8');
      if (parts.body) obj.body = Buffer.concat(text.body).toString('utf8');
    }
    await write(out, JSON.stringify(obj) + '\n');
    return true;
  }
  // markers as postcat prints them, unless one part alone was asked for
  const marked = [parts.envelope, parts.headers, parts.body].filter(Boolean).length > 1;
  if (parts.envelope) {
    if (marked) await write(out, `*** ENVELOPE RECORDS ${where} ***\n`);
    await write(out, envelopeText(queue, info));
  }
  if (parts.headers || parts.body) {
    if (marked) await write(out, `*** MESSAGE CONTENTS ${where} ***\n`);
    const lf = toLf();
    for await (const p of splitAtBody(openMessage(info))) {
      if (parts[p.part]) await write(out, lf(p.data));
    }
  }
  if (marked) await write(out, `*** MESSAGE FILE END ${where} ***\n`);
  return true;
}
