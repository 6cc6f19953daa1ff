/**
 * The administrator's queue operations (postsuper -h/-H/-d/-e/-r, postqueue -i):
 * one implementation, used by qmgr while it runs (it owns the queue and applies
 * them between deliveries) and by `postern queue` on a stopped system. Each
 * works on one message that the caller has made sure nobody else is moving.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { Spool, QueueName, isQueueId } from './spool.js';
import { fsyncDir } from '../util/group-commit.js';
import { appendStatus } from './queuefile.js';

export const QUEUE_OPS = ['hold', 'release', 'delete', 'expire', 'requeue', 'deliver'] as const;
export type QueueOp = typeof QUEUE_OPS[number];

export function isQueueOp(x: unknown): x is QueueOp {
  return typeof x === 'string' && (QUEUE_OPS as readonly string[]).includes(x);
}

/** The queues each operation takes messages from (postsuper's defaults). */
export const QUEUE_OP_SOURCES: Record<QueueOp, readonly QueueName[]> = {
  hold: ['incoming', 'active', 'deferred'],
  release: ['hold'],
  delete: ['incoming', 'active', 'deferred', 'hold'],
  expire: ['incoming', 'active', 'deferred', 'hold'],
  requeue: ['incoming', 'active', 'deferred', 'hold'],
  deliver: ['incoming', 'active', 'deferred'],
};

/** What happened to one message: the wire format of qmgr's reply and of `postern queue`'s report. */
export interface QueueOpOutcome {
  id: string;
  /** The queue the message was found in. */
  queue?: QueueName;
  result: 'held' | 'released' | 'deleted' | 'expired' | 'requeued' | 'scheduled' | 'pending' | 'not found' | 'refused';
  detail?: string;
}

/** Past tense of each operation, as reported and logged. */
export const QUEUE_OP_DONE: Record<QueueOp, QueueOpOutcome['result']> = {
  hold: 'held', release: 'released', delete: 'deleted', expire: 'expired', requeue: 'requeued', deliver: 'scheduled',
};

/** Log message per operation, Postfix's words. */
export const QUEUE_OP_LOG: Record<QueueOp, string> = {
  hold: 'placed on hold', release: 'released from hold', delete: 'removed', expire: 'marked to expire',
  requeue: 'requeued', deliver: 'scheduled for delivery',
};

/** The queue (among `queues`) holding a message, or null. */
export async function findQueued(spool: Spool, id: string, queues: readonly QueueName[]): Promise<QueueName | null> {
  for (const q of queues) {
    if (await fsp.access(spool.pathOf(q, id)).then(() => true, () => false)) return q;
  }
  return null;
}

/** Every message id in the given queues, with its queue. */
export async function listQueued(spool: Spool, queues: readonly QueueName[]): Promise<{ id: string; queue: QueueName }[]> {
  const out: { id: string; queue: QueueName }[] = [];
  for (const queue of queues) for (const id of (await spool.list(queue)).sort()) out.push({ id, queue });
  return out;
}

/**
 * Apply one operation to message `id` in queue `from`; returns the queue it is in
 * afterwards (null: removed). Moves the administrator orders are made durable.
 *
 * - hold: to hold/, where nothing delivers it.
 * - release: hold/ to deferred/, due now.
 * - delete: removed.
 * - expire: a `flags expire` status record; the next attempt returns it to the
 *   sender. A deferred message becomes due now; a held one stays held.
 * - requeue: back to incoming/, statuses kept (recipients already delivered or
 *   bounced stay so); the next attempt routes it with the current configuration.
 * - deliver: a deferred message becomes due now (qmgr then starts it at once).
 */
export async function applyQueueOp(spool: Spool, op: QueueOp, id: string, from: QueueName): Promise<QueueName | null> {
  if (!isQueueId(id)) throw new Error(`bad queue id "${id}"`);
  const now = new Date();
  switch (op) {
    case 'hold':
      if (from !== 'hold') await spool.move(id, from, 'hold', undefined, true);
      return 'hold';
    case 'release':
      if (from !== 'hold') return from;
      await spool.move(id, 'hold', 'deferred', now, true);
      return 'deferred';
    case 'delete': {
      const file = spool.pathOf(from, id);
      await fsp.unlink(file);
      await fsyncDir(path.dirname(file));
      return null;
    }
    case 'expire':
      await appendStatus(spool.pathOf(from, id), [{ type: 'flags', expire: true }]);
      if (from === 'deferred') await fsp.utimes(spool.pathOf(from, id), now, now);
      return from;
    case 'requeue':
      if (from !== 'incoming') await spool.move(id, from, 'incoming', now, true);
      return 'incoming';
    case 'deliver':
      if (from === 'deferred') await fsp.utimes(spool.pathOf(from, id), now, now);
      return from;
  }
}
