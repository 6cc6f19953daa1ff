/** `postern queue list` (mailq / postqueue -j): the queue, from the spool or, for users who cannot read it, from showq. */
import * as fs from 'node:fs';
import { Spool, QueueEntry, readQueue, requestJson } from '@postern/common';

export type { QueueEntry };

function arrival(ts: number): string {
  // Postfix prints ctime without the year: "Wed Nov 25 00:29:40"
  const s = new Date(ts * 1000).toString(); // "Wed Nov 25 2026 00:29:40 GMT..."
  return s.slice(0, 10) + s.slice(15, 24);
}

export function formatMailq(entries: QueueEntry[]): string {
  if (!entries.length) return 'Mail queue is empty\n';
  const lines = ['-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------'];
  let bytes = 0;
  for (const e of entries) {
    bytes += e.message_size;
    const mark = e.queue_name === 'active' ? '*' : e.queue_name === 'hold' ? '!' : ' ';
    lines.push(`${(e.queue_id + mark).padEnd(11)} ${String(e.message_size).padStart(8)} ${arrival(e.arrival_time).padEnd(20)}  ${e.sender || 'MAILER-DAEMON'}`);
    for (const r of e.recipients) {
      if (r.delay_reason) lines.push(`${' '.repeat(41)}(${r.delay_reason})`);
      lines.push(`${' '.repeat(41)}${r.address}`);
    }
    lines.push('');
  }
  const kb = Math.ceil(bytes / 1024);
  lines.push(`-- ${kb} Kbytes in ${entries.length} Request${entries.length === 1 ? '' : 's'}.`);
  return lines.join('\n') + '\n';
}

export function formatJson(entries: QueueEntry[]): string {
  return entries.map((e) => JSON.stringify(e)).join('\n') + (entries.length ? '\n' : '');
}

export function spoolReadable(spool: Spool): boolean {
  try { fs.accessSync(spool.dir('active'), fs.constants.R_OK | fs.constants.X_OK); return true; } catch { return false; }
}

/**
 * The queue listing: read directly when this user may read the spool (root,
 * the queue owner), else asked of the showq service over public/showq, as
 * Postfix's mailq does for ordinary users.
 */
export async function listQueue(spool: Spool): Promise<QueueEntry[]> {
  if (spoolReadable(spool)) return readQueue(spool);
  let reply: any;
  try {
    reply = await requestJson(spool.publicSocket('showq'), { type: 'list' }, 30000);
  } catch (e) {
    throw new Error(`cannot read ${spool.root} (permission denied) and showq did not answer: ${(e as Error).message}`);
  }
  if (!reply.ok || !Array.isArray(reply.entries)) throw new Error(`showq: ${reply.error ?? 'malformed reply'}`);
  return reply.entries;
}
