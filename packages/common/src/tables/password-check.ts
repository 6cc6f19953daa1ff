/**
 * Password checks off the event loop. A SHA-512-crypt check is 5000 rounds of
 * SHA-512 (≈ 9 ms of CPU in Node): run in line it would stop every other
 * session of the process for that long at each AUTH, and a password guesser
 * with parallel sessions would stall them all. The checks run one at a time,
 * in arrival order, in one worker thread started at the first check (a
 * listener that never sees AUTH never starts it). What waits is bounded:
 * beyond `maxWaiting` checks a check fails at once as unavailable, which
 * smtpd answers `454 4.7.0` (try again later), never as a wrong password.
 */
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';

/** The checker cannot answer now (worker gone, too many checks waiting): a temporary failure. */
export class PasswordCheckUnavailable extends Error {}

interface Waiting { resolve(ok: boolean): void; reject(e: Error): void }

export class PasswordChecker {
  private worker: Worker | null = null;
  private readonly waiting = new Map<number, Waiting>();
  private nextId = 1;

  constructor(private readonly maxWaiting = 256) {}

  /** Does `password` match the stored `{SCHEME}data` value (verifyPassword, in the worker)? */
  check(password: string, stored: string): Promise<boolean> {
    if (this.waiting.size >= this.maxWaiting) {
      return Promise.reject(new PasswordCheckUnavailable(`${this.waiting.size} password checks already waiting`));
    }
    const worker = this.worker ?? this.start();
    const id = this.nextId++;
    return new Promise<boolean>((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      worker.ref(); // a check under way keeps the process up; an idle worker does not
      worker.postMessage({ id, password, stored });
    });
  }

  /** Stop the worker; checks still waiting fail as unavailable. */
  async close(): Promise<void> {
    const w = this.worker;
    this.worker = null;
    if (w) await w.terminate();
    this.failAll('password checker closed');
  }

  private start(): Worker {
    const w = new Worker(path.join(__dirname, 'password-worker.js'));
    w.unref();
    w.on('message', (m: { id: number; ok: boolean }) => {
      const waiter = this.waiting.get(m.id);
      this.waiting.delete(m.id);
      if (!this.waiting.size) w.unref();
      waiter?.resolve(m.ok === true);
    });
    const gone = (why: string) => {
      if (this.worker === w) this.worker = null; // the next check starts a new one
      this.failAll(why);
    };
    w.on('error', (e) => gone(`password check worker failed: ${e.message}`));
    w.on('exit', (code) => gone(`password check worker exited (${code})`));
    this.worker = w;
    return w;
  }

  private failAll(why: string): void {
    const waiters = [...this.waiting.values()];
    this.waiting.clear();
    for (const w of waiters) w.reject(new PasswordCheckUnavailable(why));
  }
}
