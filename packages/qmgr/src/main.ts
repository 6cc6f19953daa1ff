/**
 * qmgr: the queue manager. Moves new mail from incoming/ to active/, asks the
 * delivery agents (smtp, lmtp) to deliver each recipient group, records each
 * recipient's result in the queue file, and then removes the file, or parks
 * it in deferred/ until its next retry (its mtime is the retry time, as in
 * Postfix). Reads a message's content to build a notification for its
 * sender (bounce.ts): the header section, or for DSN RET=FULL the whole
 * message when it is within bounce_size_limit; and to stream it to local
 * (which cannot read the queue) in a delivery request. Talks to the network never.
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import {
  runService, ServiceContext, RunningService, MainConfig, Spool, readQueueFile, appendStatus, recipientStates,
  attemptCount, CorruptQueueFile, QueueFileInfo, StatusRecord, RequestPool,
  delaySince, Logger, QueueName, serveRequests, DeliveryResult, DeliveryRequest, DeliveryReply,
  QmgrRequest, QueueAdminReply, TriggerReply, validate, qmgrRequest, LocalDeliveryRequest, LOCAL_QMGR, openMessage,
} from '@postern/common';
import { planDeliveries, DeliveryGroup } from './route.js';
import { notifySenderOfBounces, warnSenderOfDelay, notifySenderOfSuccess, successRecipients, DsnRecipient } from './bounce.js';
import { QueueAdmin } from './admin.js';

/** Counting semaphore per key (transport/destination). */
class Limits {
  private busy = new Map<string, number>();
  private waiters = new Map<string, (() => void)[]>();
  async acquire(key: string, limit: number): Promise<void> {
    while ((this.busy.get(key) ?? 0) >= limit) {
      await new Promise<void>((r) => { const w = this.waiters.get(key) ?? []; w.push(r); this.waiters.set(key, w); });
    }
    this.busy.set(key, (this.busy.get(key) ?? 0) + 1);
  }
  release(key: string): void {
    this.busy.set(key, (this.busy.get(key) ?? 1) - 1);
    this.waiters.get(key)?.shift()?.();
  }
}

/** Messages in hand up to which qmgr keeps a small message's bytes from its first read. */
const KEEP_MESSAGES = 256;

/** The message of a queue file, chunk by chunk; the file is closed when the reading stops, finished or not. */
async function* messageChunks(info: QueueFileInfo): AsyncIterable<Buffer> {
  const stream = openMessage(info);
  try {
    for await (const chunk of stream) yield chunk as Buffer;
  } finally {
    stream.destroy();
  }
}

export function backoffSeconds(attempts: number, config: MainConfig): number {
  const min = config.seconds('minimal_backoff_time');
  const max = config.seconds('maximal_backoff_time');
  return Math.min(max, min * 2 ** Math.max(0, Math.min(attempts - 1, 30)));
}

/** The claimed ids; every release wakes whoever waits for room in active/. */
class Claims extends Set<string> {
  private waiters: (() => void)[] = [];
  override delete(id: string): boolean {
    const had = super.delete(id);
    if (had) for (const w of this.waiters.splice(0)) w();
    return had;
  }
  /** Resolves once fewer than `limit` are claimed (at once when that is so now). */
  async room(limit: number, stopping: () => boolean): Promise<void> {
    while (this.size >= limit && !stopping()) await new Promise<void>((r) => this.waiters.push(r));
  }
  /** Wakes the waiters without a release (qmgr stopping). */
  wake(): void { for (const w of this.waiters.splice(0)) w(); }
}

class QueueManager {
  /**
   * Messages being worked on (a delivery, a scan moving it, an administrator's
   * operation), by id: claimed synchronously before any move, so never two at once.
   */
  readonly busy = new Claims();
  private limits = new Limits();
  /** Kept connections to each delivery agent's socket: one request per message, not one connection. */
  private agents = new Map<string, RequestPool>();
  private scanning = false;
  private rescan = false;
  stopping = false;
  private timers: NodeJS.Timeout[] = [];

  private admin = new QueueAdmin(this);
  /**
   * The dead-destination table, one for all smtp processes: "address:port" ->
   * until (ms). smtp reports hosts that failed at connect or greeting; each
   * request carries the ones to skip; a flush forgets them all (Postfix's qmgr
   * does the same on a flush).
   */
  private deadHosts = new Map<string, number>();

  constructor(readonly ctx: ServiceContext) {}

  get config(): MainConfig { return this.ctx.config; }
  get spool(): Spool { return this.ctx.spool; }
  get log(): Logger { return this.ctx.log; }

  start(): void {
    // A restarted qmgr owns whatever a previous one left in active/.
    void this.scanQueue('active').then(() => this.scanIncoming()).then(() => this.scanDeferred());
    this.timers.push(setInterval(() => void this.scanIncoming(), 5000));
    void this.removeAbandonedTempFiles();
    this.timers.push(setInterval(() => void this.removeAbandonedTempFiles(), 3600 * 1000));
    this.scheduleDeferredScan();
  }

  private scheduleDeferredScan(): void {
    const every = Math.max(1, Math.min(this.config.seconds('queue_run_delay'), this.config.seconds('minimal_backoff_time')));
    // active/ too: an attempt that threw (a status write on a full disk) left its
    // message there, unclaimed; without this only a restart would retry it
    const t = setTimeout(() => {
      void this.scanQueue('active').then(() => this.scanDeferred()).finally(() => { if (!this.stopping) this.scheduleDeferredScan(); });
    }, every * 1000);
    this.timers.push(t);
  }

  /**
   * A cleanup killed while writing leaves incoming/.ID behind: never acknowledged,
   * so nobody is owed it. Remove those untouched for an hour.
   */
  private async removeAbandonedTempFiles(): Promise<void> {
    const dir = this.spool.dir('incoming');
    for (const name of await fsp.readdir(dir).catch(() => [] as string[])) {
      if (!name.startsWith('.')) continue;
      const file = `${dir}/${name}`;
      const st = await fsp.stat(file).catch(() => null);
      if (st && Date.now() - st.mtimeMs > 3600 * 1000) {
        await fsp.unlink(file).catch(() => undefined);
        this.log.info({ queue_id: name.slice(1), file }, 'removed abandoned temporary queue file');
      }
    }
  }

  /** Waits until active/ has room under qmgr_message_active_limit (Postfix's qmgr does the same). */
  private room(): Promise<void> {
    return this.busy.room(Math.max(1, this.config.int('qmgr_message_active_limit')), () => this.stopping);
  }

  /** Coalesce triggers: one scan at a time, one more if a trigger came during it. */
  async scanIncoming(): Promise<void> {
    if (this.scanning) { this.rescan = true; return; }
    this.scanning = true;
    try {
      do {
        this.rescan = false;
        for (const id of (await this.spool.list('incoming')).sort()) {
          // a full active/ is waited out, not re-listed in a loop
          await this.room();
          if (this.stopping || this.busy.has(id)) continue;
          this.busy.add(id);
          try { await this.spool.move(id, 'incoming', 'active'); } catch { await this.admin.release(id); continue; }
          this.launch(id);
        }
      } while (this.rescan && !this.stopping);
    } finally {
      this.scanning = false;
    }
  }

  /** Launch every unclaimed message in a queue (active/: what no attempt holds). */
  private async scanQueue(queue: QueueName): Promise<void> {
    for (const id of await this.spool.list(queue).catch(() => [] as string[])) {
      if (this.stopping) return;
      if (!this.busy.has(id)) this.launch(id);
    }
  }

  /** A deferred scan is running; a flush asked for one meanwhile (all: every message is due). */
  private deferredScanning = false;
  private deferredRescan: { all: boolean } | null = null;

  /**
   * Deferred messages whose retry time (mtime) has come, or all of them on a flush,
   * moved into active/ as qmgr_message_active_limit leaves room: a flush of 100,000
   * messages does not read and hold them all at once. One scan at a time; a request
   * during it runs once more after it.
   */
  async scanDeferred(all = false): Promise<void> {
    if (this.deferredScanning) {
      this.deferredRescan = { all: all || !!this.deferredRescan?.all };
      return;
    }
    this.deferredScanning = true;
    try {
      let next: { all: boolean } | null = { all };
      while (next && !this.stopping) {
        this.deferredRescan = null;
        await this.scanDeferredOnce(next.all);
        next = this.deferredRescan;
      }
    } finally {
      this.deferredScanning = false;
    }
  }

  private async scanDeferredOnce(all: boolean): Promise<void> {
    const now = Date.now();
    for (const id of await this.spool.list('deferred')) {
      await this.room();
      if (this.stopping || this.busy.has(id)) continue;
      const file = this.spool.pathOf('deferred', id);
      this.busy.add(id);
      const st = fs.statSync(file, { throwIfNoEntry: false });
      if (!st || (!all && st.mtimeMs > now)) { await this.admin.release(id); continue; }
      try { await this.spool.move(id, 'deferred', 'active'); } catch { await this.admin.release(id); continue; }
      this.launch(id);
    }
  }

  /** Start an attempt on a message in active/; it holds the claim until admin's release. */
  launch(id: string): void {
    this.busy.add(id);
    this.processMessage(id)
      .catch((e) => this.log.error({ queue_id: id, err: (e as Error).stack }, 'message processing failed; it stays in active/ for the next scan of active/'))
      // operations the administrator asked for during the attempt apply now, then the claim goes
      .finally(() => this.admin.release(id).catch((e) => this.log.error({ queue_id: id, err: (e as Error).message }, 'queue operation failed')));
  }

  private async processMessage(id: string): Promise<void> {
    const file = this.spool.pathOf('active', id);
    let info: QueueFileInfo;
    try {
      // the message bytes of a small file come with the one read (local gets them from qmgr, issue 10), but only while
      // few messages are in hand: a flush of thousands must not hold each one's bytes (at most KEEP_MESSAGES x 64 KiB)
      info = await readQueueFile(file, { keepMessage: this.busy.size <= KEEP_MESSAGES });
    } catch (e) {
      if (e instanceof CorruptQueueFile || (e as NodeJS.ErrnoException).code !== 'ENOENT') {
        await this.spool.move(id, 'active', 'corrupt').catch(() => undefined);
        this.log.warn({ queue_id: id, err: (e as Error).message }, 'corrupt queue file moved to corrupt/');
      }
      return;
    }
    const env = info.envelope;
    if (env.id !== id) {
      await this.spool.move(id, 'active', 'corrupt').catch(() => undefined);
      this.log.warn({ queue_id: id, err: `file names queue id ${env.id}` }, 'corrupt queue file moved to corrupt/');
      return;
    }
    const attempts = attemptCount(info) + 1;
    if (attempts === 1) {
      this.log.info({ queue_id: id, from: `<${env.sender}>`, size: info.messageLength, nrcpt: env.recipients.length }, 'queue active');
    }
    const pending = recipientStates(info).filter((r) => r.status === 'pending' || r.status === 'deferred');
    const lifetime = this.config.seconds(env.sender === '' ? 'bounce_queue_lifetime' : 'maximal_queue_lifetime') * 1000;
    const expired = Date.now() - env.arrival > lifetime || info.statuses.some((s) => s.type === 'flags' && s.expire);
    if (pending.length && expired) {
      const records: StatusRecord[] = pending.map((r) => ({
        type: 'rcpt', index: r.index, status: 'bounced', dsn: r.dsn?.startsWith('4') ? '5' + r.dsn.slice(1) : '4.4.7',
        reason: `message expired in queue${r.reason ? `: ${r.reason}` : ''}`, at: Date.now(),
      }));
      await appendStatus(file, records);
      info.statuses.push(...records);
      for (const r of pending) {
        this.log.info({ queue_id: id, to: `<${r.address}>`, delay: delaySince(env.arrival), dsn: '4.4.7', status: 'expired' }, 'message expired in queue; returned to sender');
      }
      return this.finish(id, info);
    }
    const plan = await planDeliveries(pending.map((r) => ({ index: r.index, address: env.recipients[r.index].address })), this.config);
    const successes: DsnRecipient[] = [];
    const records = (await Promise.all(plan.groups.map((g) => this.deliverGroup(info, g, successes)))).flat();
    // a route that could not be looked up (a table down): deferred, tried again at the next retry
    for (const d of plan.deferred) {
      records.push({ type: 'rcpt', index: d.index, status: 'deferred', dsn: d.dsn, reason: d.reason, at: Date.now() });
      this.log.info({ queue_id: id, to: `<${d.address}>`, relay: 'none', delay: delaySince(env.arrival), dsn: d.dsn, status: 'deferred' },
        `deferred (${d.reason})`);
    }
    // NOTIFY=SUCCESS: the notice goes before the file may be removed below
    if (successes.length) await notifySenderOfSuccess(this.ctx, info, successes);
    // every recipient delivered now, none bounced earlier (those need a DSN): nothing is left to remember
    const allSentNow = pending.length > 0 && pending.length === env.recipients.length
      && pending.every((p) => records.some((r) => r.type === 'rcpt' && r.index === p.index && r.status === 'sent'));
    if (allSentNow) {
      // skip the status write: a crash before the unlink means one more delivery, never a loss
      fs.unlinkSync(file); // in line, as the spool's other calls (common/queue)
      this.log.info({ queue_id: id }, 'removed');
      return;
    }
    const written: StatusRecord[] = [...records, { type: 'attempt', at: Date.now(), attempts }];
    await appendStatus(file, written);
    info.statuses.push(...written);
    return this.finish(id, info, attempts);
  }

  /**
   * After an attempt: remove a finished message, or defer it with its next retry time.
   * `info` already holds the status records just appended (no second read of the file).
   */
  private async finish(id: string, info: QueueFileInfo, attempts = 1): Promise<void> {
    const file = info.file;
    const states = recipientStates(info);
    if (states.every((s) => s.status === 'sent' || s.status === 'bounced')) {
      // the original goes only once cleanup holds the sender's notification; otherwise it waits for the next retry
      if (await notifySenderOfBounces(this.ctx, info)) {
        fs.unlinkSync(file);
        this.log.info({ queue_id: id }, 'removed');
        return;
      }
    } else {
      await warnSenderOfDelay(this.ctx, info);
    }
    const wait = backoffSeconds(attempts, this.config);
    await this.spool.move(id, 'active', 'deferred', new Date(Date.now() + wait * 1000));
  }

  /** One delivery request; returns the status records to write (the caller writes them once). */
  private async deliverGroup(info: QueueFileInfo, group: DeliveryGroup, successes: DsnRecipient[]): Promise<StatusRecord[]> {
    const key = `${group.transport}:${group.nexthop}`;
    await this.limits.acquire(key, group.concurrency);
    let results: DeliveryResult[];
    try {
      results = await this.requestDelivery(info, group);
    } catch (e) {
      const reason = `delivery temporarily suspended: ${(e as Error).message}`;
      this.log.warn({ queue_id: info.envelope.id, transport: group.transport, err: (e as Error).message }, 'delivery agent failed');
      results = group.recipients.map((r) => ({ index: r.index, status: 'deferred', dsn: '4.3.0', reason }));
    } finally {
      this.limits.release(key);
    }
    const known = new Set(group.recipients.map((r) => r.index));
    const records: StatusRecord[] = results.filter((r) => known.has(r.index))
      .map((r) => ({ type: 'rcpt', index: r.index, status: r.status, dsn: r.dsn, reason: r.reason, relay: r.relay, at: Date.now() }));
    successes.push(...successRecipients(info, results.filter((r) => known.has(r.index))));
    for (const r of group.recipients) {
      if (!results.some((x) => x.index === r.index)) {
        records.push({ type: 'rcpt', index: r.index, status: 'deferred', dsn: '4.3.0', reason: 'delivery agent gave no result', at: Date.now() });
      }
    }
    return records;
  }

  private async requestDelivery(info: QueueFileInfo, group: DeliveryGroup): Promise<DeliveryResult[]> {
    const socketPath = this.spool.privateSocket(group.transport);
    const timeoutMs = this.config.seconds('delivery_timeout') * 1000;
    let agent = this.agents.get(socketPath);
    if (!agent) this.agents.set(socketPath, agent = new RequestPool(socketPath));
    if (group.transport === LOCAL_QMGR) {
      // local cannot read the queue: the message goes along in the frames (docs/local.md)
      const request: LocalDeliveryRequest = {
        type: 'deliver', queue_id: info.envelope.id, sender: info.envelope.sender, arrival: info.envelope.arrival, recipients: group.recipients,
      };
      const reply: DeliveryReply = await agent.request(request, timeoutMs, () => messageChunks(info));
      if (!Array.isArray(reply.results)) throw new Error(reply.error || 'malformed reply from delivery agent');
      return reply.results;
    }
    const request: DeliveryRequest = {
      type: 'deliver',
      queue_id: info.envelope.id,
      file: info.file,
      nexthop: group.nexthop,
      recipients: group.recipients,
      skip: this.deadDestinations(),
    };
    const reply: DeliveryReply = await agent.request(request, timeoutMs);
    if (Array.isArray(reply.dead)) this.markDead(reply.dead, info.envelope.id);
    if (!Array.isArray(reply.results)) throw new Error(reply.error || 'malformed reply from delivery agent');
    return reply.results;
  }

  /** Hosts still dead now (expired entries go). */
  private deadDestinations(): string[] {
    const now = Date.now();
    for (const [k, until] of this.deadHosts) if (until <= now) this.deadHosts.delete(k);
    return [...this.deadHosts.keys()];
  }

  private markDead(hosts: unknown[], queueId: string): void {
    const until = Date.now() + this.config.seconds('smtp_dead_destination_time') * 1000;
    for (const h of hosts) {
      if (typeof h !== 'string' || h.length > 300) continue;
      if (!this.deadHosts.has(h)) this.log.info({ queue_id: queueId, host: h, until: new Date(until).toISOString() }, 'destination marked dead');
      this.deadHosts.set(h, until);
    }
  }

  /** A flush: every host is worth trying again. */
  forgetDeadDestinations(): void {
    if (!this.deadHosts.size) return;
    this.log.info({ hosts: [...this.deadHosts.keys()] }, 'flush: dead destinations forgotten');
    this.deadHosts.clear();
  }

  /** A request on qmgr's socket: cleanup's trigger, or the administrator's (admin.ts). */
  async handleRequest(req: QmgrRequest): Promise<TriggerReply | QueueAdminReply> {
    if (req.type === 'trigger') {
      void this.scanIncoming();
      return { ok: true };
    }
    // flush, hold, release, delete, expire, requeue, deliver: see admin.ts
    return await this.admin.handle(req) ?? { ok: false, error: `unknown request ${(req as { type?: unknown }).type}` };
  }

  async stop(): Promise<void> {
    this.stopping = true;
    this.busy.wake();
    for (const t of this.timers) clearTimeout(t);
    // deliveries in flight finish; their files stay in active/ and are picked up at the next start
    const deadline = Date.now() + 10000;
    while (this.busy.size && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    for (const agent of this.agents.values()) agent.close();
  }
}

async function start(ctx: ServiceContext): Promise<RunningService> {
  const qmgr = new QueueManager(ctx);
  qmgr.start();
  const server = serveRequests<QmgrRequest, TriggerReply | QueueAdminReply>({
    check: (raw) => validate(qmgrRequest, raw),
    answer: (req) => qmgr.handleRequest(req),
    failure: (error) => ({ ok: false, error }),
    log: ctx.log,
    logFields: { socket: `private/${ctx.name}` },
    // cleanup keeps one connection for its triggers; the CLI sends one request and closes
    many: true,
  });
  return {
    listen: (h) => server.listen(h),
    async stop() {
      await server.stop();
      await qmgr.stop();
    },
  };
}

if (require.main === module) runService('qmgr', start);
