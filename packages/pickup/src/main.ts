/**
 * pickup: takes the files `sendmail` leaves in maildrop/ and hands each message
 * to cleanup. Trusts nothing in a file for identity but its owner's uid: that
 * gives the default sender, the `Received: ... from userid UID` line, and the
 * X-Authentication-Warning: when an ordinary user sets another sender with -f.
 * A file is removed only after cleanup has the message on stable storage; one
 * pickup cannot read or make sense of goes to corrupt/. Never talks to the network.
 *
 * Wake-ups: maildrop/ is scanned every second, and at once when root or the
 * queue owner (sendmail run by them, the CLI) pokes pickup's private socket.
 * Ordinary users cannot reach that socket and rely on the scan (docs/pickup.md).
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import {
  runService, ServiceContext, RunningService, Spool, Logger,
  serveRequests, PickupTrigger, TriggerReply, validate, pickupTrigger, submitMessage, CleanupUnreachable, LocalEnvelope,
  lookupSystemUser, parseMaildropHeader, MaildropHeader, MAILDROP_HEADER_LIMIT, isMaildropTempName, qualifyAddress,
  headerSafe, isQueueId, newQueueId, fsyncDir, MainConfig, submitRefusal, CLEANUP_LOCAL,
} from '@postern/common';

const SCAN_EVERY_MS = 1000;
/** A temporary file untouched this long belongs to a sendmail that died. */
const STALE_TEMP_MS = 24 * 3600 * 1000;
const MAX_RETRY_DELAY_MS = 60000;
const CLEANUP_TIMEOUT_MS = 120000;

class MaildropFileError extends Error {}

type DsnNotify = NonNullable<LocalEnvelope['recipients'][number]['notify']>[number];

/** Login name for a uid: /etc/passwd, then NSS (getent), else the number itself. */
function userName(uid: number): string {
  const u = lookupSystemUser(uid);
  if (u) return u.name;
  const r = spawnSync('getent', ['passwd', String(uid)], { encoding: 'utf8', timeout: 5000 });
  const name = r.status === 0 ? String(r.stdout).split(':')[0] : '';
  return name || String(uid);
}

/** The JSON line at the start of the file, and where the message starts. */
async function readHeader(fh: fsp.FileHandle): Promise<{ header: MaildropHeader; messageStart: number }> {
  const chunks: Buffer[] = [];
  let total = 0;
  for (;;) {
    const buf = Buffer.alloc(64 * 1024);
    const { bytesRead } = await fh.read(buf, 0, buf.length, total);
    if (!bytesRead) throw new MaildropFileError('no end of the header line');
    const nl = buf.subarray(0, bytesRead).indexOf(0x0a);
    if (nl >= 0) {
      chunks.push(buf.subarray(0, nl));
      const line = Buffer.concat(chunks).toString('utf8');
      try { return { header: parseMaildropHeader(line), messageStart: total + nl + 1 }; } catch (e) {
        throw new MaildropFileError((e as Error).message);
      }
    }
    chunks.push(buf.subarray(0, bytesRead));
    total += bytesRead;
    if (total > MAILDROP_HEADER_LIMIT) throw new MaildropFileError('header line too long');
  }
}

interface Retry { at: number; delay: number }

class Pickup {
  private timer?: NodeJS.Timeout;
  private scanning: Promise<void> | null = null;
  private rescan = false;
  private stopping = false;
  /** Files cleanup refused: tried again later, with backoff, so one bad file cannot hold up the rest. */
  private retries = new Map<string, Retry>();
  /** cleanup unreachable: no scan before this time. */
  private cleanupDown: Retry | null = null;
  private lastScanError = '';

  constructor(private spool: Spool, private log: Logger, private config: () => MainConfig) {}

  start(): void {
    this.timer = setInterval(() => void this.scan(), SCAN_EVERY_MS);
    void this.scan();
  }

  /** One scan at a time; a request during a scan makes one more. */
  scan(): Promise<void> {
    if (this.scanning) { this.rescan = true; return this.scanning; }
    this.scanning = (async () => {
      do {
        this.rescan = false;
        await this.scanOnce().catch((e) => this.log.error({ err: (e as Error).message }, 'maildrop scan failed'));
      } while (this.rescan && !this.stopping);
    })().finally(() => { this.scanning = null; });
    return this.scanning;
  }

  async stop(): Promise<void> {
    this.stopping = true;
    if (this.timer) clearInterval(this.timer);
    await this.scanning;
  }

  private get dir(): string { return this.spool.dir('maildrop'); }

  private async scanOnce(): Promise<void> {
    if (this.cleanupDown && Date.now() < this.cleanupDown.at) return;
    let names: string[];
    try {
      names = (await fsp.readdir(this.dir)).sort(); // queue-id names: oldest first
      this.lastScanError = '';
    } catch (e) {
      const msg = (e as Error).message;
      if (msg !== this.lastScanError) this.log.error({ err: msg }, 'cannot read maildrop');
      this.lastScanError = msg;
      return;
    }
    for (const name of names) {
      if (this.stopping) return;
      if (isMaildropTempName(name)) { await this.removeIfStale(name); continue; }
      const retry = this.retries.get(name);
      if (retry && Date.now() < retry.at) continue;
      if (!(await this.pickUp(name))) return; // cleanup is not reachable: try again later
    }
    for (const name of this.retries.keys()) if (!names.includes(name)) this.retries.delete(name);
  }

  private async removeIfStale(name: string): Promise<void> {
    const file = path.join(this.dir, name);
    const st = await fsp.lstat(file).catch(() => null);
    if (!st || Date.now() - st.mtimeMs < STALE_TEMP_MS) return;
    await fsp.unlink(file).then(
      () => this.log.warn({ maildrop_file: name, uid: st.uid }, 'removed an abandoned temporary file'),
      () => undefined);
  }

  /** Take one file; false only when cleanup cannot be reached. */
  private async pickUp(name: string): Promise<boolean> {
    const file = path.join(this.dir, name);
    let fh: fsp.FileHandle;
    try {
      // never follow a link a user planted, never block on a FIFO
      fh = await fsp.open(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return true; // taken away meanwhile
      if (code === 'ELOOP' || code === 'ENXIO') return this.removeNonFile(name);
      return this.moveToCorrupt(name, `cannot open: ${(e as Error).message}`);
    }
    try {
      const st = await fh.stat();
      if (st.isDirectory()) return await this.moveToCorrupt(name, 'a directory', st.uid);
      if (!st.isFile()) return await this.removeNonFile(name);
      // authorized_submit_users, by the file owner's uid: the only identity pickup trusts
      const user = userName(st.uid);
      const refusal = submitRefusal(this.config(), st.uid, user === String(st.uid) ? 'unknown' : user);
      if (refusal) return await this.refuse(name, st.uid, refusal);
      // a hard link to someone else's file would borrow its owner's identity
      if (st.nlink !== 1) return await this.moveToCorrupt(name, `has ${st.nlink} links`, st.uid);
      let parsed: { header: MaildropHeader; messageStart: number };
      try { parsed = await readHeader(fh); } catch (e) {
        if (e instanceof MaildropFileError) return await this.moveToCorrupt(name, e.message, st.uid);
        throw e;
      }
      return await this.toCleanup(name, fh, st.uid, parsed.header, parsed.messageStart);
    } finally {
      await fh.close().catch(() => undefined);
    }
  }

  private async toCleanup(name: string, fh: fsp.FileHandle, uid: number, h: MaildropHeader, messageStart: number): Promise<boolean> {
    const config = this.config();
    const myorigin = config.get('myorigin');
    const user = userName(uid);
    const ownAddress = qualifyAddress(user, myorigin);
    const sender = h.sender === null ? ownAddress : qualifyAddress(h.sender, myorigin);
    // root and the queue owner may set any sender; anyone else is noted, as Postfix does
    const trusted = uid === 0 || uid === process.getuid!();
    const warning = h.sender !== null && !trusted && sender.toLowerCase() !== ownAddress.toLowerCase()
      ? `X-Authentication-Warning: ${config.get('myhostname')}: ${headerSafe(user)} set sender to ${headerSafe(sender || '<>')} using -f\r\n`
      : '';
    const envelope: LocalEnvelope = {
      sender,
      // parseMaildropHeader let through only NEVER, SUCCESS, FAILURE, DELAY
      recipients: h.recipients.map((r) => ({ address: qualifyAddress(r, myorigin), ...(h.notify ? { notify: h.notify as DsnNotify[] } : {}) })),
      origin: 'pickup',
      protocol: 'LOCAL',
      uid,
      user,
      ...(h.ret || h.envid ? { dsn: { ...(h.ret ? { ret: h.ret } : {}), ...(h.envid ? { envid: h.envid } : {}) } } : {}),
    };

    // the warning (if any) in front of the file's message, streamed, never read whole
    async function* message(): AsyncGenerator<Buffer> {
      if (warning) yield Buffer.from(warning);
      yield* fh.createReadStream({ start: messageStart, autoClose: false, highWaterMark: 256 * 1024 }) as AsyncIterable<Buffer>;
    }
    try {
      const reply = await submitMessage(this.spool.privateSocket(CLEANUP_LOCAL), envelope, message(), { idleTimeoutMs: CLEANUP_TIMEOUT_MS });
      this.cleanupDown = null;
      // a request cleanup's schema refuses is refused every time: keep it for the administrator, do not retry
      if (!reply.ok && /^invalid request: /.test(String(reply.error))) return await this.moveToCorrupt(name, `cleanup: ${reply.error}`, uid);
      if (!reply.ok) throw new Error(`cleanup: ${reply.error ?? 'refused'}`);
      // cleanup has it on stable storage: only now may the maildrop copy go
      await fsp.unlink(path.join(this.dir, name));
      this.retries.delete(name);
      this.log.info({ queue_id: reply.queue_id, maildrop_file: name, uid, user, from: `<${sender}>`,
        nrcpt: envelope.recipients.length, ...(warning ? { sender_set_by_user: true } : {}) }, 'picked up');
    } catch (e) {
      if (e instanceof CleanupUnreachable) {
        const delay = Math.min(MAX_RETRY_DELAY_MS, (this.cleanupDown?.delay ?? 500) * 2);
        if (!this.cleanupDown) this.log.warn({ err: e.message }, 'cleanup is not reachable; maildrop waits');
        this.cleanupDown = { at: Date.now() + delay, delay };
        return false;
      }
      this.cleanupDown = null;
      const delay = Math.min(MAX_RETRY_DELAY_MS, (this.retries.get(name)?.delay ?? 500) * 2);
      this.retries.set(name, { at: Date.now() + delay, delay });
      this.log.warn({ maildrop_file: name, uid, err: (e as Error).message, retry_in_ms: delay }, 'message not queued; will retry');
    }
    return true;
  }

  /** A file from a user who may not submit mail: logged with its uid and removed, never queued. */
  private async refuse(name: string, uid: number, problem: string): Promise<true> {
    await fsp.unlink(path.join(this.dir, name)).then(
      () => this.log.warn({ maildrop_file: name, uid, problem }, 'maildrop file refused and removed: not authorized to submit mail'),
      (e) => {
        this.retries.set(name, { at: Date.now() + MAX_RETRY_DELAY_MS, delay: MAX_RETRY_DELAY_MS });
        this.log.error({ maildrop_file: name, uid, problem, err: (e as Error).message }, 'maildrop file refused but could not be removed');
      });
    return true;
  }

  /** A symbolic link, FIFO or socket holds no message, and corrupt/ is no place for a link: it goes. */
  private async removeNonFile(name: string): Promise<true> {
    const file = path.join(this.dir, name);
    const st = await fsp.lstat(file).catch(() => null);
    const kind = st?.isSymbolicLink() ? 'symbolic link' : st?.isFIFO() ? 'FIFO' : st?.isSocket() ? 'socket' : 'special file';
    await fsp.unlink(file).then(
      () => this.log.warn({ maildrop_file: name, uid: st?.uid, problem: `a ${kind}` }, 'removed a maildrop entry that is not a file'),
      (e) => {
        this.retries.set(name, { at: Date.now() + MAX_RETRY_DELAY_MS, delay: MAX_RETRY_DELAY_MS });
        this.log.error({ maildrop_file: name, uid: st?.uid, err: (e as Error).message }, `cannot remove a ${kind} from maildrop`);
      });
    return true;
  }

  /** Keep what pickup cannot use, for the administrator to look at; returns true (scan goes on). */
  private async moveToCorrupt(name: string, problem: string, uid?: number): Promise<true> {
    const dest = isQueueId(name) && !fs.existsSync(this.spool.pathOf('corrupt', name)) ? name : newQueueId();
    try {
      await fsp.rename(path.join(this.dir, name), this.spool.pathOf('corrupt', dest));
      await fsyncDir(this.spool.dir('corrupt'));
      this.log.warn({ maildrop_file: name, uid, corrupt_file: dest, problem }, 'unusable maildrop file moved to corrupt/');
    } catch (e) {
      const delay = MAX_RETRY_DELAY_MS;
      this.retries.set(name, { at: Date.now() + delay, delay });
      this.log.error({ maildrop_file: name, uid, problem, err: (e as Error).message }, 'unusable maildrop file could not be moved to corrupt/');
    }
    return true;
  }
}

async function start(ctx: ServiceContext): Promise<RunningService> {
  const pickup = new Pickup(ctx.spool, ctx.log, () => ctx.config);
  pickup.start();
  /** Wake-up requests: `{type: "trigger"}`, answered `{ok: true}` at once. */
  const server = serveRequests<PickupTrigger, TriggerReply>({
    timeoutMs: 5000,
    check: (raw) => validate(pickupTrigger, raw),
    log: ctx.log,
    logFields: { socket: `private/${ctx.name}` },
    answer() {
      void pickup.scan();
      return { ok: true };
    },
    failure: (error) => ({ ok: false, error }),
  });
  return {
    listen: (h) => server.listen(h),
    async stop() {
      await server.stop();
      await pickup.stop();
    },
  };
}

runService('pickup', start);
