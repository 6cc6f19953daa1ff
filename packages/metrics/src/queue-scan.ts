/**
 * Queue sizes and the oldest message's age, from directory listings alone:
 * the arrival time is in the queue id (the file name), so no queue file is
 * opened or even stat()ed. Bounded per directory, and cached briefly so a
 * busy scraper does not turn into a directory-walking loop.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { Spool, isQueueId, queueIdTime, HASH_DIR_NAME } from '@postern/common';

export const GAUGE_QUEUES = ['incoming', 'active', 'deferred', 'hold', 'corrupt'] as const;
export type GaugeQueue = typeof GAUGE_QUEUES[number];

/** Beyond this many names in one directory the count stops (and says so): the scrape stays cheap. */
const MAX_NAMES_PER_DIR = 200_000;
const CACHE_MS = 2000;

export interface QueueSnapshot {
  counts: Record<GaugeQueue, number>;
  /** Seconds since the oldest message (incoming, active, deferred, hold) arrived; 0 when none. */
  oldest_age_seconds: number;
  /** Some directory held more than MAX_NAMES_PER_DIR names: counts are lower bounds. */
  truncated: boolean;
  scanned_at: string;
}

async function names(dir: string): Promise<{ names: string[]; truncated: boolean }> {
  const out: string[] = [];
  let d;
  try { d = await fsp.opendir(dir); } catch { return { names: out, truncated: false }; }
  try {
    for await (const ent of d) {
      if (out.length >= MAX_NAMES_PER_DIR) return { names: out, truncated: true };
      out.push(ent.name);
    }
  } catch { /* the directory went away mid-scan: what was read counts */ }
  return { names: out, truncated: false };
}

export class QueueScanner {
  private cached?: { at: number; snap: Promise<QueueSnapshot> };
  constructor(private readonly spool: Spool, private readonly now: () => number = Date.now) {}

  snapshot(): Promise<QueueSnapshot> {
    const t = this.now();
    if (this.cached && t - this.cached.at < CACHE_MS) return this.cached.snap;
    const snap = this.scan();
    this.cached = { at: t, snap };
    snap.catch(() => { this.cached = undefined; });
    return snap;
  }

  private async scan(): Promise<QueueSnapshot> {
    const counts = { incoming: 0, active: 0, deferred: 0, hold: 0, corrupt: 0 } as Record<GaugeQueue, number>;
    let oldest = Infinity;
    let truncated = false;
    const count = (q: GaugeQueue, list: string[]) => {
      for (const n of list) {
        if (n.startsWith('.')) continue; // cleanup's file still being written
        counts[q]++;
        if (q !== 'corrupt' && isQueueId(n)) oldest = Math.min(oldest, queueIdTime(n).getTime());
      }
    };
    for (const q of GAUGE_QUEUES) {
      const dir = this.spool.dir(q);
      const top = await names(dir);
      truncated ||= top.truncated;
      if (q !== 'deferred') { count(q, top.names); continue; }
      for (const sub of top.names) {
        if (!HASH_DIR_NAME.test(sub)) continue;
        const inner = await names(path.join(dir, sub));
        truncated ||= inner.truncated;
        count(q, inner.names);
      }
    }
    const now = this.now();
    return {
      counts, truncated, scanned_at: new Date(now).toISOString(),
      oldest_age_seconds: oldest === Infinity ? 0 : Math.max(0, Math.round((now - oldest) / 1000)),
    };
  }
}
