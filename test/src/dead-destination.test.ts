/**
 * The dead-destination table (issue 8, item 15): a smart host that failed at
 * connect is skipped for smtp_dead_destination_time; `postern queue flush`
 * forgets the table, as Postfix's flush does, so mail goes out as soon as the
 * host is back. smtp_dead_destination_time is an hour here: only a forgotten
 * table explains a delivery within seconds. The smtp process that found the
 * host dead is killed before the retry: the new one still skips the host, so
 * the table is qmgr's (one for every smtp process), not a process's own.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import nodemailer from 'nodemailer';
import { Instance, freePort, waitFor } from './harness.js';
import { SmtpSink } from './smtp-sink.js';

const SENDER = 'alice@a.test';
const PASS = 'alice-secret';


describe('dead destinations: one table in qmgr, forgotten by flush', () => {
  let a: Instance;
  let port: number;
  let sink: SmtpSink | undefined;

  before(async () => {
    port = await freePort();
    a = await Instance.create({ domain: 'a.test', users: [{ address: SENDER, password: PASS }],
      main: { relayhost: `[127.0.0.1]:${port}`, smtp_dead_destination_time: '1h' } });
    await a.start();
  });
  after(async () => { await sink?.stop(); await a.destroy(); });

  it('a smart host that was down is tried again at once after postern queue flush', async () => {
    const t = nodemailer.createTransport({ host: '127.0.0.1', port: a.ports.submission, secure: false, requireTLS: true,
      auth: { user: SENDER, pass: PASS }, tls: { rejectUnauthorized: false } });
    const info = await t.sendMail({ from: SENDER, to: 'friend@far-away.test', subject: 'while the smart host was down', text: 'hello\n' });
    const id = /queued as ([0-9A-F]{20})/.exec(info.response)?.[1];
    assert.ok(id, info.response);
    // first attempt: connection refused; the retry after the 1-2 s backoff finds the host marked dead
    const refused = await a.waitForLog('deferred at connect', (e) => e.queue_id === id && e.status === 'deferred', 20000);
    assert.match(refused.msg, /connect to .*127\.0\.0\.1/);
    // the table is qmgr's, not an smtp process's: a fresh smtp process still skips the host
    const smtps = () => a.status().services.filter((s: any) => s.command === 'smtp' && s.pid).map((s: any) => s.pid as number);
    const killed = smtps();
    assert.ok(killed.length >= 1, 'smtp runs');
    for (const pid of killed) process.kill(pid, 'SIGKILL');
    await waitFor('master to start a new smtp process', () => { const now = smtps(); return now.length >= 1 && now.every((p: number) => !killed.includes(p)); }, 20000);
    // the first attempt a new smtp process makes: it skips the host instead of connecting again
    const next = await waitFor('the first attempt of a new smtp process', () => a.logs().find((e) =>
      e.queue_id === id && e.status === 'deferred' && e.service === 'smtp' && !killed.includes(e.pid)), 20000);
    assert.match(next.msg, /host marked dead/, 'the new smtp process knows the host is dead: qmgr told it');

    sink = await new SmtpSink('127.0.0.1', port).start();
    a.cli(['queue', 'flush']);
    await waitFor('delivered to the smart host after the flush', () => sink!.received().some((m) => m.includes('Subject: while the smart host was down')), 20000);
    await a.waitForLog('sent line', (e) => e.queue_id === id && e.status === 'sent', 10000);
    await waitFor('queue empty', () => a.queueEmpty(), 10000);
  });
});
