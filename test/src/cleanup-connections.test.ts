/**
 * smtpd keeps its connections to cleanup (issue 10): one connection carries
 * message after message instead of one connect and accept per message. A kept
 * connection that cleanup closes while it is idle (kill -9, then master's
 * restart) is noticed and dropped, so the next message gets its 250 from the
 * new cleanup, not a 451 from a dead connection.
 */
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Instance, RawSmtp, waitFor } from './harness.js';

/** Inodes of the connected sockets cleanup accepted on private/cleanup (smtpd's socket), from /proc/net/unix. */
function cleanupConnections(inst: Instance): string[] {
  const socketPath = path.join(inst.spool, 'private', 'cleanup');
  const inodes: string[] = [];
  for (const line of fs.readFileSync('/proc/net/unix', 'utf8').split('\n').slice(1)) {
    // Num RefCount Protocol Flags Type St Inode Path; St 03 = connected
    const f = line.trim().split(/\s+/);
    if (f.length >= 8 && f[5] === '03' && f.slice(7).join(' ') === socketPath) inodes.push(f[6]);
  }
  return inodes;
}

async function sendOne(c: RawSmtp, subject: string): Promise<string> {
  assert.match(await c.command('MAIL FROM:<sender@remote.test>'), /^250/);
  assert.match(await c.command('RCPT TO:<bob@example.test>'), /^250/);
  assert.match(await c.command('DATA'), /^354/);
  const reply = await c.command(`Subject: ${subject}\r\n\r\nbody of ${subject}\r\n.`);
  assert.match(reply, /^250 2\.0\.0 Ok: queued as [0-9A-F]{20}$/, `${subject}: ${reply}`);
  return reply;
}

async function cleanupPid(inst: Instance): Promise<number | undefined> {
  return (inst.status().services ?? []).find((s: any) => s.command === 'cleanup' && s.running && s.pid)?.pid;
}

describe('smtpd keeps its connections to cleanup', () => {
  let inst: Instance;
  before(async () => {
    inst = await Instance.create({ users: [{ address: 'bob@example.test' }] });
    await inst.start();
  });
  after(async () => { await inst.destroy(); });

  it('sends message after message on one connection, and drops it when cleanup is killed while it is idle', async () => {
    const c = await RawSmtp.connect(inst.ports.smtp);
    try {
      assert.match(await c.command('EHLO client.remote.test'), /^250/);
      await sendOne(c, 'first');
      // the connection stays open once the message is queued
      const kept = await waitFor('a connection to cleanup kept after the first message', () => {
        const now = cleanupConnections(inst);
        return now.length === 1 ? now[0] : null;
      }, 15000);
      await sendOne(c, 'second');
      await sendOne(c, 'third');
      assert.deepEqual(cleanupConnections(inst), [kept], 'the second and third messages went over the same connection');

      // cleanup dies while the connection is idle; master starts a new one
      const old = await waitFor('cleanup running', () => cleanupPid(inst));
      process.kill(old, 'SIGKILL');
      await waitFor('master to restart cleanup', async () => {
        const pid = await cleanupPid(inst);
        return pid && pid !== old ? pid : null;
      }, 30000);
      await waitFor('the dead connection to be gone', () => !cleanupConnections(inst).includes(kept), 15000);
      // the next message is not sent down the dead connection: 250, not 451
      await sendOne(c, 'fourth');
      assert.match(await c.command('QUIT'), /^221/);
    } finally {
      c.close();
    }
    await waitFor('four messages delivered', () => inst.delivered('bob@example.test').length === 4 || null, 30000);
    const subjects = inst.delivered('bob@example.test').map((f) => /^Subject: (\w+)$/m.exec(fs.readFileSync(f, 'utf8'))?.[1]).sort();
    assert.deepEqual(subjects, ['first', 'fourth', 'second', 'third']);
    await waitFor('the queue to be empty', () => inst.queueEmpty(), 15000);
  });
});
