/**
 * `postern queue flush` of a large deferred queue (issue 10, target 4): qmgr
 * brings deferred messages into active/ only as qmgr_message_active_limit
 * leaves room, as Postfix's qmgr does, instead of moving the whole deferred
 * queue into active/ at once (100,000 messages read and held in memory, each
 * waiting for a delivery slot). The smart host here accepts connections and
 * never greets, so the first deliveries hang and hold their slots; with a limit
 * of 2, two messages are in active/ and the rest stay in deferred/. Once the
 * host is a real SMTP server, a second flush delivers them all: the scan that
 * waited for room does not leave any behind.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { Instance, freePort, waitFor, submitAs } from './harness.js';
import { SmtpSink } from './smtp-sink.js';

const SENDER = 'alice@a.test';
const PASS = 'alice-secret';
const MESSAGES = 6;
const LIMIT = 2;

describe('flush: deferred messages enter active/ within qmgr_message_active_limit', () => {
  let a: Instance;
  let port: number;
  let mute: net.Server | undefined;
  const muted: net.Socket[] = [];
  let sink: SmtpSink | undefined;

  before(async () => {
    port = await freePort();
    a = await Instance.create({ domain: 'a.test', users: [{ address: SENDER, password: PASS }],
      main: { relayhost: `[127.0.0.1]:${port}`, qmgr_message_active_limit: String(LIMIT),
        // no retry and no queue run of their own: only the flushes deliver
        minimal_backoff_time: '1h', maximal_backoff_time: '1h', queue_run_delay: '1h', smtp_dead_destination_time: '1h' } });
    await a.start();
  });
  after(async () => {
    for (const s of muted) s.destroy();
    await new Promise<void>((r) => (mute ? mute.close(() => r()) : r()));
    await sink?.stop();
    await a.destroy();
  });

  it('a flush moves at most the limit into active/, and a later flush delivers the rest', async () => {
    // nothing listens yet: each first attempt is refused at connect and deferred
    for (let i = 0; i < MESSAGES; i++) await submitAs(a, SENDER, PASS, `friend@far-away.test`, `flush limit ${i}`);
    await waitFor(`${MESSAGES} messages deferred`, () => a.queued('deferred').length === MESSAGES && a.queued('active').length === 0
      && a.queued('incoming').length === 0, 30000);

    // a host that takes the connection and never greets: each delivery holds its slot
    mute = net.createServer((s) => { muted.push(s); s.on('error', () => undefined); });
    await new Promise<void>((r) => mute!.listen(port, '127.0.0.1', () => r()));
    a.cli(['queue', 'flush']);
    await waitFor(`${LIMIT} connections to the smart host`, () => muted.length >= LIMIT, 20000);
    // let the flush's scan run on: without the limit it moves every deferred message now
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(a.queued('active').length, LIMIT, 'messages in active/ while the deliveries hang');
    assert.equal(a.queued('deferred').length, MESSAGES - LIMIT, 'messages left in deferred/');
    assert.equal(muted.length, LIMIT, 'connections to the smart host');

    // the hung deliveries fail (the host goes away); then a real server, and a second flush delivers all
    await new Promise<void>((r) => { mute!.close(() => r()); for (const s of muted) s.destroy(); });
    mute = undefined;
    await waitFor('the hung attempts deferred', () => a.queued('active').length === 0 && a.queued('deferred').length === MESSAGES, 30000);
    sink = await new SmtpSink('127.0.0.1', port).start();
    a.cli(['queue', 'flush']);
    await waitFor(`all ${MESSAGES} at the smart host`, () => sink!.received().length === MESSAGES, 30000);
    await waitFor('queue empty', () => a.queueEmpty(), 10000);
  });
});
