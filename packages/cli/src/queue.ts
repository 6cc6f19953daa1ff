/** `postern queue list` (mailq / postqueue -j): what is in the queue, read from the spool. */
import * as fs from 'node:fs';
import { Spool, QueueName, readQueueFile, recipientStates, CorruptQueueFile } from '@postern/common';

export interface QueueEntry {
  queue_name: QueueName;
  queue_id: string;
  arrival_time: number;
  message_size: number;
  forced_expire: boolean;
  sender: string;
  recipients: { address: string; delay_reason?: string }[];
}

const LISTED: QueueName[] = ['incoming', 'active', 'deferred', 'hold'];

export async function readQueue(spool: Spool): Promise<QueueEntry[]> {
  const out: QueueEntry[] = [];
  for (const q of LISTED) {
    for (const id of (await spool.list(q)).sort()) {
      try {
        const info = await readQueueFile(spool.pathOf(q, id));
        const pending = recipientStates(info).filter((r) => r.status === 'pending' || r.status === 'deferred');
        out.push({
          queue_name: q, queue_id: id, arrival_time: Math.floor(info.envelope.arrival / 1000),
          message_size: info.messageLength + info.prepend.length,
          forced_expire: info.statuses.some((s) => s.type === 'flags' && !!s.expire),
          sender: info.envelope.sender,
          recipients: pending.map((r) => (r.reason ? { address: r.address, delay_reason: r.reason } : { address: r.address })),
        });
      } catch (e) {
        // moved or removed while we looked, or not ours to judge: qmgr handles corrupt files
        if (!(e instanceof CorruptQueueFile) && (e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      }
    }
  }
  return out;
}

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
