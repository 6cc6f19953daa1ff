/**
 * The administrator's requests on qmgr's socket (`postern queue` as root or the
 * queue owner): hold, release, delete, expire, requeue, deliver, flush.
 *
 * qmgr owns the queue, so it alone moves files while it runs. A message is
 * "claimed" while anyone works on it (a delivery, a scan moving it, one of
 * these operations): the claim is qmgr's busy set, taken synchronously, so two
 * movers never race. An operation on a message that is being delivered waits
 * and is applied when that attempt has ended (Postfix does the same for
 * postsuper on active mail): nothing is lost, nothing is delivered twice.
 */
import {
  ServiceContext, Spool, Logger, QueueName, QueueOp, QueueOpOutcome, QUEUE_OP_SOURCES, QUEUE_OP_DONE, QUEUE_OP_LOG,
  isQueueOp, isQueueId, applyQueueOp, findQueued, listQueued, readQueueFile, recipientStates, splitAddress, QUEUES,
  QmgrRequest, QueueAdminReply,
} from '@postern/common';

/** What admin needs from the queue manager. */
export interface QueueOwner {
  readonly ctx: ServiceContext;
  /** Claimed message ids: the scans and deliveries skip these. */
  readonly busy: Set<string>;
  readonly stopping: boolean;
  /** Start an attempt on a message already in active/ and claimed; the attempt takes over the claim. */
  launch(id: string): void;
  scanIncoming(): Promise<void>;
  scanDeferred(all?: boolean): Promise<void>;
  /** Empty the dead-destination table (a flush retries every host). */
  forgetDeadDestinations(): void;
}

interface PendingOp { op: QueueOp; queues: readonly QueueName[] }

const ADMIN_QUEUES: readonly QueueName[] = ['incoming', 'active', 'deferred', 'hold'];

export class QueueAdmin {
  /** Operations waiting for a delivery in progress to end, by queue id. */
  private pending = new Map<string, PendingOp[]>();

  constructor(private q: QueueOwner) {}

  private get spool(): Spool { return this.q.ctx.spool; }
  private get log(): Logger { return this.q.ctx.log; }

  /** A request from the socket; null when its type is not an administrative one. */
  async handle(req: QmgrRequest): Promise<QueueAdminReply | null> {
    if (req?.type !== 'flush' && !isQueueOp(req?.type)) return null;
    if (this.q.stopping) return { ok: false, error: 'qmgr is stopping; try again when the mail system is up' };
    if (req.type === 'flush') return this.flush(req.site);
    const op: QueueOp = req.type;
    let queues = QUEUE_OP_SOURCES[op];
    const wanted = req.queues;
    if (wanted !== undefined) {
      if (!Array.isArray(wanted) || !wanted.every((x: unknown) => QUEUES.includes(x as QueueName))) {
        return { ok: false, error: 'queues: want a list of queue names' };
      }
      queues = queues.filter((x) => wanted.includes(x));
    }
    let ids: string[];
    if (req.ids === 'ALL') {
      ids = (await listQueued(this.spool, queues)).map((x) => x.id);
      // messages being delivered are in active/ whatever a listing saw
      if (queues.includes('active')) for (const id of this.q.busy) if (!ids.includes(id)) ids.push(id);
    } else if (Array.isArray(req.ids) && req.ids.every((x: unknown) => typeof x === 'string')) {
      ids = req.ids;
    } else return { ok: false, error: 'ids: want a list of queue ids or "ALL"' };

    const results: QueueOpOutcome[] = [];
    for (const id of ids) {
      if (!isQueueId(id)) { results.push({ id, result: 'refused', detail: 'bad queue id' }); continue; }
      if (this.q.busy.has(id)) {
        if (op === 'deliver') { results.push({ id, queue: 'active', result: 'scheduled', detail: 'delivery in progress' }); continue; }
        const list = this.pending.get(id) ?? [];
        list.push({ op, queues });
        this.pending.set(id, list);
        results.push({ id, queue: 'active', result: 'pending', detail: 'applied when the delivery in progress ends' });
        continue;
      }
      this.q.busy.add(id);
      let launched = false;
      try {
        const r = await this.apply(op, id, queues);
        launched = r.launched;
        results.push(r.outcome);
      } catch (e) {
        results.push({ id, result: 'refused', detail: (e as Error).message });
      } finally {
        if (!launched) await this.release(id);
      }
    }
    if (op === 'requeue' || op === 'deliver' || op === 'expire') void this.q.scanIncoming();
    if (op === 'release') void this.q.scanDeferred();
    return { ok: true, results };
  }

  /**
   * Let go of a claimed message, first applying what the administrator asked
   * for while it was busy. Called by qmgr at the end of every attempt.
   */
  async release(id: string): Promise<void> {
    let handedOver = false;
    let trigger: 'incoming' | 'deferred' | null = null;
    try {
      const list = this.pending.get(id);
      while (list?.length && !this.q.stopping) {
        const { op, queues } = list.shift()!;
        try {
          const r = await this.apply(op, id, queues);
          if (r.outcome.result === 'not found') this.log.info({ queue_id: id, op }, `${op}: message no longer queued`);
          if (op === 'requeue') trigger = 'incoming';
          if (op === 'release') trigger = 'deferred';
          if (r.launched) { handedOver = true; break; }
        } catch (e) {
          this.log.warn({ queue_id: id, op, err: (e as Error).message }, 'queue operation failed');
        }
      }
      if (!list?.length) this.pending.delete(id);
    } finally {
      if (!handedOver) this.q.busy.delete(id);
    }
    if (trigger === 'incoming') void this.q.scanIncoming();
    if (trigger === 'deferred') void this.q.scanDeferred();
  }

  /** One operation on a claimed message; `launched` means an attempt now holds the claim. */
  private async apply(op: QueueOp, id: string, queues: readonly QueueName[]): Promise<{ outcome: QueueOpOutcome; launched: boolean }> {
    const from = await findQueued(this.spool, id, queues);
    if (!from) {
      const elsewhere = await findQueued(this.spool, id, ADMIN_QUEUES);
      if (!elsewhere) return { outcome: { id, result: 'not found' }, launched: false };
      const why = elsewhere === 'hold' ? 'is on hold (release it first)' : op === 'release' ? `is not on hold (in ${elsewhere}/)` : `is in ${elsewhere}/`;
      return { outcome: { id, queue: elsewhere, result: 'refused', detail: why }, launched: false };
    }
    const now = await applyQueueOp(this.spool, op, id, from);
    this.log.info({ queue_id: id, queue: from, ...(now && now !== from ? { to_queue: now } : {}), status: QUEUE_OP_DONE[op] },
      `${QUEUE_OP_LOG[op]} by the administrator`);
    const outcome: QueueOpOutcome = { id, queue: from, result: QUEUE_OP_DONE[op] };
    // deliver and expire act now: the attempt delivers, or returns the expired message to its sender
    if ((op === 'deliver' || op === 'expire') && (now === 'deferred' || now === 'incoming' || now === 'active')) {
      if (now !== 'active') await this.spool.move(id, now, 'active');
      this.q.launch(id);
      return { outcome, launched: true };
    }
    return { outcome, launched: false };
  }

  /** postqueue -f (everything deferred, now) and -s SITE (messages with a pending recipient there). */
  private async flush(site: unknown): Promise<QueueAdminReply> {
    // as Postfix's flush: a host marked dead is tried again, or flushing would change nothing
    this.q.forgetDeadDestinations();
    if (site === undefined || site === null) {
      void this.q.scanIncoming();
      void this.q.scanDeferred(true);
      return { ok: true };
    }
    const domain = typeof site === 'string' ? site.toLowerCase().replace(/^\[(.*)\]$/, '$1') : '';
    if (!/^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$/.test(domain)) return { ok: false, error: `bad site "${String(site)}"` };
    const scheduled: string[] = [];
    for (const id of await this.spool.list('deferred')) {
      if (this.q.stopping || this.q.busy.has(id)) continue;
      this.q.busy.add(id);
      let launched = false;
      try {
        const info = await readQueueFile(this.spool.pathOf('deferred', id));
        const there = recipientStates(info).some((r) => (r.status === 'pending' || r.status === 'deferred')
          && splitAddress(r.address).domain.toLowerCase() === domain);
        if (there) {
          await this.spool.move(id, 'deferred', 'active');
          this.q.launch(id);
          launched = true;
          scheduled.push(id);
        }
      } catch {
        // moved meanwhile, or unreadable: its own attempt deals with it
      } finally {
        if (!launched) await this.release(id);
      }
    }
    this.log.info({ site: domain, nmsg: scheduled.length }, 'flush requested for one site');
    return { ok: true, scheduled };
  }
}
