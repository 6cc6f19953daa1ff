/** The worker thread of password-check.ts: verifyPassword for each check posted to it, in order. */
import { parentPort } from 'node:worker_threads';
import { verifyPassword } from './password.js';

parentPort!.on('message', (m: { id: number; password: unknown; stored: unknown }) => {
  const ok = typeof m.password === 'string' && typeof m.stored === 'string' && verifyPassword(m.password, m.stored);
  parentPort!.postMessage({ id: m.id, ok });
});
