/**
 * Connections kept between messages on the delivery path: qmgr -> lmtp (the
 * request pool), lmtp -> local (LMTP, no RSET after a completed DATA) and
 * cleanup -> qmgr (the trigger link).
 * When the service at the far end restarts, the next message must still go out
 * at once, over a new connection: not deferred, not lost, not doubled.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { randomUUID } from 'node:crypto';
import nodemailer from 'nodemailer';
import { Instance, waitFor } from './harness.js';

const RCPT = 'bob@example.test';

async function send(inst: Instance, subject: string): Promise<void> {
  const transport = nodemailer.createTransport({ host: '127.0.0.1', port: inst.ports.smtp, secure: false, ignoreTLS: true, name: 'client.remote.test' });
  try {
    await transport.sendMail({ from: 'alice@remote.test', to: RCPT, subject, text: `message ${subject}`, messageId: `<${randomUUID()}@remote.test>` });
  } finally {
    transport.close();
  }
}

function subjects(inst: Instance): string[] {
  return inst.delivered(RCPT).map((f) => /^Subject: (.*)$/m.exec(fs.readFileSync(f, 'utf8'))?.[1] ?? '?').sort();
}

function pidOf(inst: Instance, command: string): number {
  const s = (inst.status().services ?? []).find((x: any) => x.command === command && x.running && x.pid);
  assert.ok(s, `${command} is running`);
  return s.pid;
}

async function restart(inst: Instance, command: string): Promise<void> {
  const old = pidOf(inst, command);
  process.kill(old, 'SIGKILL');
  await waitFor(`master to restart ${command}`, () => (inst.status().services ?? []).some((x: any) => x.command === command && x.running && x.pid && x.pid !== old), 30000);
}

test('a restarted lmtp or local: the next message is delivered at once over a new connection, once', async () => {
  const inst = await Instance.create({ users: [{ address: RCPT }] });
  try {
    await inst.start();
    for (const [i, command] of [[1, 'local'], [2, 'lmtp'], [3, 'local']] as const) {
      await send(inst, `before-${i}`);
      await waitFor(`before-${i} delivered`, () => subjects(inst).includes(`before-${i}`));
      // a second message on the kept connections, so both ends hold one idle
      await send(inst, `kept-${i}`);
      await waitFor(`kept-${i} delivered`, () => subjects(inst).includes(`kept-${i}`));
      await restart(inst, command);
      await send(inst, `after-${i}`);
      await waitFor(`after-${i} delivered`, () => subjects(inst).includes(`after-${i}`), 20000);
    }
    assert.deepEqual(subjects(inst), ['after-1', 'after-2', 'after-3', 'before-1', 'before-2', 'before-3', 'kept-1', 'kept-2', 'kept-3'], 'each exactly once');
    const deferred = inst.logs().filter((e) => e.status === 'deferred' || e.msg === 'delivery agent failed');
    assert.deepEqual(deferred, [], 'no message waited for a retry');
  } finally {
    await inst.destroy();
  }
});

test('a restarted qmgr: cleanup wakes the new one over a new connection, every message delivered once', async () => {
  // cleanup keeps one connection to qmgr for its triggers; qmgr killed leaves it closed
  const inst = await Instance.create({ users: [{ address: RCPT }] });
  try {
    await inst.start();
    for (let i = 1; i <= 2; i++) {
      await send(inst, `before-q${i}`);
      await send(inst, `kept-q${i}`);
      await waitFor(`kept-q${i} delivered`, () => subjects(inst).includes(`before-q${i}`) && subjects(inst).includes(`kept-q${i}`));
      await restart(inst, 'qmgr');
      await send(inst, `after-q${i}`);
      await waitFor(`after-q${i} delivered`, () => subjects(inst).includes(`after-q${i}`), 20000);
    }
    assert.deepEqual(subjects(inst), ['after-q1', 'after-q2', 'before-q1', 'before-q2', 'kept-q1', 'kept-q2'], 'each exactly once');
    const unwoken = inst.logs().filter((e) => e.msg?.startsWith('could not wake qmgr'));
    assert.deepEqual(unwoken, [], 'every trigger reached a qmgr');
  } finally {
    await inst.destroy();
  }
});
