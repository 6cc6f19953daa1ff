/**
 * Logging (issue 2, item 9): one structured line per event with Postfix's
 * fields, written by a daemonised master to maillog_file and reopened on
 * reload (SIGHUP), so logrotate can move the file away.
 */
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { Instance, RawSmtp, waitFor } from './harness.js';

async function send(inst: Instance, subject: string): Promise<string> {
  const c = await RawSmtp.connect(inst.ports.smtp);
  await c.command('EHLO client.example.test');
  await c.command('MAIL FROM:<sender@remote.test>');
  await c.command('RCPT TO:<logme@example.test>');
  await c.command('DATA');
  const reply = await c.command(`Subject: ${subject}\r\n\r\nbody\r\n.`);
  c.close();
  const m = /queued as ([0-9A-F]{20})/.exec(reply);
  assert.ok(m, reply);
  return m[1];
}

describe('smtpd_recipient_limit', () => {
  let inst: Instance;
  before(async () => {
    inst = await Instance.create({ users: ['r1', 'r2', 'r3'].map((u) => ({ address: `${u}@example.test` })), main: { smtpd_recipient_limit: '2' } });
    await inst.start();
  });
  after(async () => { await inst.destroy(); });

  it('answers 452 4.5.3 past the limit and keeps the recipients it took', async () => {
    const c = await RawSmtp.connect(inst.ports.smtp);
    await c.command('EHLO client.example.test');
    await c.command('MAIL FROM:<sender@remote.test>');
    assert.match(await c.command('RCPT TO:<r1@example.test>'), /^250/);
    assert.match(await c.command('RCPT TO:<r2@example.test>'), /^250/);
    assert.match(await c.command('RCPT TO:<r3@example.test>'), /^452 4\.5\.3/);
    await c.command('DATA');
    assert.match(await c.command('Subject: two of three\r\n\r\nbody\r\n.'), /^250 /);
    c.close();
    await waitFor('r1 and r2 delivered', () => inst.delivered('r1@example.test').length === 1 && inst.delivered('r2@example.test').length === 1);
    assert.equal(inst.delivered('r3@example.test').length, 0);
  });
});

describe('the mail log', () => {
  let inst: Instance;
  before(async () => {
    inst = await Instance.create({ users: [{ address: 'logme@example.test' }] });
    await inst.start();
  });
  after(async () => { await inst.destroy(); });

  it('has one JSON line per event with queue_id, from, to, relay, delay, dsn and status', async () => {
    const id = await send(inst, 'first');
    const sent = await inst.waitForLog('the delivery line', (e) => e.queue_id === id && e.status === 'sent');
    assert.equal(sent.to, '<logme@example.test>');
    // issue 10: qmgr asks local directly, local logs the line (Postfix: relay=virtual)
    assert.match(sent.relay, /^local\[private\/local\.qmgr\]$/);
    assert.equal(typeof sent.delay, 'number');
    assert.equal(sent.dsn, '2.0.0');
    assert.ok(sent.time && sent.service && sent.pid);
    const queued = await inst.waitForLog('the qmgr line', (e) => e.queue_id === id && e.msg === 'queue active');
    assert.equal(queued.from, '<sender@remote.test>');
    assert.equal(queued.nrcpt, 1);
    await inst.waitForLog('removed', (e) => e.queue_id === id && e.msg === 'removed');
    for (const line of fs.readFileSync(inst.logFile, 'utf8').trim().split('\n')) JSON.parse(line);
  });

  it('reopens maillog_file on reload, after logrotate moved it away', async () => {
    fs.renameSync(inst.logFile, `${inst.logFile}.1`);
    inst.cli(['reload']);
    await waitFor('a new log file', () => fs.existsSync(inst.logFile), 10000);
    const id = await send(inst, 'second');
    await inst.waitForLog('the delivery in the new file', (e) => e.queue_id === id && e.status === 'sent');
    assert.ok(!fs.readFileSync(`${inst.logFile}.1`, 'utf8').includes(id), 'nothing more is written to the rotated file');
  });
});

describe('the mail log at stop', () => {
  it('holds every service\'s last line, "stopping", once postern stop has returned', async () => {
    // master reads its children's output in batches: what they write as they exit must still be read before it exits
    const inst = await Instance.create();
    try {
      await inst.start();
      const services = (inst.status().services ?? []).filter((s: any) => s.pid);
      assert.ok(services.length >= 5, `services running: ${services.length}`);
      await inst.stop();
      const stopping = new Set(inst.logs().filter((e) => e.msg === 'stopping').map((e) => e.pid));
      for (const s of services) assert.ok(stopping.has(s.pid), `${s.command} (${s.service}, pid ${s.pid}) logged "stopping"`);
      for (const line of fs.readFileSync(inst.logFile, 'utf8').trim().split('\n')) JSON.parse(line);
    } finally {
      await inst.destroy();
    }
  });
});
