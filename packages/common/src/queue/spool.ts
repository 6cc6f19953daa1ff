/**
 * The spool's layout: queue names, queue ids, where a message's file lives,
 * and the one durable way to move or create a directory entry.
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { fsyncDir } from '../util/group-commit.js';

export const QUEUES = ['maildrop', 'incoming', 'active', 'deferred', 'hold', 'corrupt'] as const;
export type QueueName = typeof QUEUES[number];

/**
 * Queue ids: 10 hex digits of seconds, 5 of microseconds, 5 random — sortable by
 * arrival, unique across processes without coordination, and safe as a file name.
 */
const ID_RE = /^[0-9A-F]{20}$/;
let lastMicros = 0n;

export function newQueueId(): string {
  let micros = BigInt(Date.now()) * 1000n;
  if (micros <= lastMicros) micros = lastMicros + 1n; // several ids in one millisecond
  lastMicros = micros;
  const secs = micros / 1000000n;
  const usec = micros % 1000000n;
  return (secs.toString(16).padStart(10, '0') + usec.toString(16).padStart(5, '0') + randomHex5()).toUpperCase();
}

/** Random bytes drawn 4 KiB at a time: one call into the CSPRNG per 1,365 ids, not one per id (a measurable cost in cleanup). */
let randomPool = Buffer.alloc(0);
let randomAt = 0;
function randomHex5(): string {
  if (randomAt + 3 > randomPool.length) { randomPool = randomBytes(4095); randomAt = 0; }
  const hex = randomPool.toString('hex', randomAt, randomAt + 3).slice(0, 5);
  randomAt += 3;
  return hex;
}

export function isQueueId(id: string): boolean {
  return ID_RE.test(id);
}

/** Arrival time encoded in a queue id. */
export function queueIdTime(id: string): Date {
  return new Date(parseInt(id.slice(0, 10), 16) * 1000 + Math.floor(parseInt(id.slice(10, 15), 16) / 1000));
}

export class Spool {
  constructor(readonly root: string) {}

  dir(queue: QueueName): string { return path.join(this.root, queue); }

  /** deferred/ is hashed one level by the id's last digit so no directory grows huge. */
  pathOf(queue: QueueName, id: string): string {
    if (!isQueueId(id)) throw new Error(`bad queue id "${id}"`);
    return queue === 'deferred' ? path.join(this.root, queue, id[id.length - 1], id) : path.join(this.root, queue, id);
  }

  /** Temporary name while cleanup writes a file; qmgr ignores names starting with a dot. */
  tempPathOf(id: string): string { return path.join(this.root, 'incoming', `.${id}`); }

  privateSocket(name: string): string { return path.join(this.root, 'private', name); }
  publicSocket(name: string): string { return path.join(this.root, 'public', name); }
  pidFile(): string { return path.join(this.root, 'pid', 'master.pid'); }
  statusFile(): string { return path.join(this.root, 'pid', 'services.json'); }

  /** Queue ids in one queue (looking into deferred's hash directories). */
  async list(queue: QueueName): Promise<string[]> {
    const dir = this.dir(queue);
    const names = await fsp.readdir(dir).catch(() => [] as string[]);
    if (queue !== 'deferred') return names.filter(isQueueId);
    const ids: string[] = [];
    for (const sub of names) {
      if (!/^[0-9A-F]$/.test(sub)) continue;
      for (const n of await fsp.readdir(path.join(dir, sub)).catch(() => [] as string[])) if (isQueueId(n)) ids.push(n);
    }
    return ids;
  }

  /** Find which queue holds an id. */
  locate(id: string): QueueName | null {
    for (const q of QUEUES) {
      if (q === 'maildrop') continue;
      if (fs.existsSync(this.pathOf(q, id))) return q;
    }
    return null;
  }

  /**
   * Move a message between queues. No directory fsync: the file's content is
   * already durable, and a rename lost in a crash leaves it in a queue that qmgr
   * scans at start (incoming, active or deferred), so nothing is lost — as in
   * Postfix. Moves that an administrator orders (hold, release) pass durable=true.
   */
  async move(id: string, from: QueueName, to: QueueName, when?: Date, durable = false): Promise<string> {
    const src = this.pathOf(from, id);
    const dst = this.pathOf(to, id);
    // a new hash directory: the mode layout.ts gives it (the setgid bit comes from deferred/)
    // in line, as the queue file's own calls (queuefile.ts): microseconds on the spool's file system
    if (to === 'deferred') fs.mkdirSync(path.dirname(dst), { recursive: true, mode: 0o750 });
    if (when) fs.utimesSync(src, new Date(), when);
    fs.renameSync(src, dst);
    if (durable) {
      await fsyncDir(path.dirname(dst));
      if (path.dirname(src) !== path.dirname(dst)) await fsyncDir(path.dirname(src));
    }
    return dst;
  }
}

