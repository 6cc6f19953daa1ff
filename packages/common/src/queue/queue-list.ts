/**
 * What is in the queue, read from the spool: the one listing that `postern
 * queue list`, `mailq`, `sendmail -bp` and the showq service all print.
 */
import { Spool, QueueName } from './spool.js';
import { readQueueFile, recipientStates, CorruptQueueFile } from './queuefile.js';

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

