/**
 * The dead-destination table (issue 8, item 15): a smart host that failed at
 * connect is skipped for smtp_dead_destination_time; `postern queue flush`
 * forgets the table, as Postfix's flush does, so mail goes out as soon as the
 * host is back. smtp_dead_destination_time is an hour here: only a forgotten
 * table explains a delivery within seconds.
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
    await a.waitForLog('retry skips the dead host', (e) => e.queue_id === id && e.status === 'deferred' && /host marked dead/.test(e.msg), 20000);

    sink = await new SmtpSink('127.0.0.1', port).start();
    a.cli(['queue', 'flush']);
    await waitFor('delivered to the smart host after the flush', () => sink!.received().some((m) => m.includes('Subject: while the smart host was down')), 20000);
    await a.waitForLog('sent line', (e) => e.queue_id === id && e.status === 'sent', 10000);
    await waitFor('queue empty', () => a.queueEmpty(), 10000);
  });
});
