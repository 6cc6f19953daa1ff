/**
 * `postern stats` (issue 14, item 3): a real instance receives a known mix
 * (local deliveries, an unknown user and a relay attempt rejected, a message
 * deferred at a dead MX, one bounced by Postfix's smtp-sink with a 5xx) and the
 * summary's numbers equal what was sent; and a hand-written log where --since
 * leaves old lines out, with overlong and broken lines skipped.
 */
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import nodemailer from 'nodemailer';
import { Instance, RawSmtp, freePort, waitFor } from './harness.js';
import { SmtpSink } from './smtp-sink.js';
import { TestDnsServer } from './dns-server.js';

const ALICE = 'alice@example.test';
const PASS = 'alice-secret';


function stats(inst: Instance, args: string[] = []): any {
  return JSON.parse(inst.cli(['stats', '--json', ...args]).stdout);
}

describe('postern stats on a real instance', () => {
  let dns: TestDnsServer;
  let inst: Instance;
  let sink: SmtpSink;

  before(async () => {
    const port = await freePort('127.0.0.6');
    dns = await new TestDnsServer({ records: [
      // nothing listens on 127.0.0.4: delivery there is deferred
      { name: 'defer.test', type: 'MX', value: '10 mx.defer.test' },
      { name: 'mx.defer.test', type: 'A', value: '127.0.0.4' },
      { name: 'bounce.test', type: 'MX', value: '10 mx.bounce.test' },
      { name: 'mx.bounce.test', type: 'A', value: '127.0.0.6' },
      // the test's own connections come from a client with a forward-confirmed name
      { name: '127.0.0.1', type: 'PTR', value: 'client.sender.test' },
      { name: 'client.sender.test', type: 'A', value: '127.0.0.1' },
    ] }).start();
    sink = await new SmtpSink('127.0.0.6', port, ['-f', 'RCPT']).start();
    inst = await Instance.create({ users: [{ address: ALICE, password: PASS }],
      // loopback clients are outsiders here, so relaying is refused as on the internet
      main: { dns_servers: dns.address, smtp_port: String(port), mynetworks: '10.255.0.0/16' } });
    await inst.start();
  });
  after(async () => { await inst?.destroy(); await sink?.stop(); await dns?.close(); });

  it('counts what was received, delivered, deferred, bounced and rejected', async () => {
    // two messages from outside to a local user
    const mx = nodemailer.createTransport({ host: '127.0.0.1', port: inst.ports.smtp, secure: false, tls: { rejectUnauthorized: false } });
    for (const n of [1, 2]) await mx.sendMail({ from: 'bob@sender.test', to: ALICE, subject: `local ${n}`, text: 'hello\n' });
    // an unknown user and a relay attempt, both refused at RCPT
    const c = await RawSmtp.connect(inst.ports.smtp);
    assert.match(await c.command('EHLO client.sender.test'), /^250/);
    assert.match(await c.command('MAIL FROM:<bob@sender.test>'), /^250/);
    assert.match(await c.command(`RCPT TO:<nobody@example.test>`), /^550 5\.1\.1/);
    assert.match(await c.command('RCPT TO:<someone@elsewhere.test>'), /^554 5\.7\.1/);
    await c.command('QUIT');
    c.close();
    // alice submits one message to a dead MX (deferred) and one to a 5xx sink (bounced, DSN back to her)
    const sub = nodemailer.createTransport({ host: '127.0.0.1', port: inst.ports.submission, secure: false, requireTLS: true,
      auth: { user: ALICE, pass: PASS }, tls: { rejectUnauthorized: false } });
    await sub.sendMail({ from: ALICE, to: 'rcpt@defer.test', subject: 'deferred', text: 'later\n' });
    await sub.sendMail({ from: ALICE, to: 'rcpt@bounce.test', subject: 'bounced', text: 'never\n' });

    await waitFor('three deliveries to alice (two messages and the DSN)',
      () => inst.logs().filter((e) => e.status === 'sent' && e.to === `<${ALICE}>`).length === 3, 30000);
    await inst.waitForLog('the bounce', (e) => e.status === 'bounced' && e.to === '<rcpt@bounce.test>', 20000);
    await inst.waitForLog('a deferral', (e) => e.status === 'deferred' && e.to === '<rcpt@defer.test>', 20000);

    const st = stats(inst);
    assert.equal(st.received, 5, 'four messages sent and one DSN');
    assert.equal(st.delivered, 3);
    assert.equal(st.deferred, 1);
    assert.ok(st.deferrals >= 1, `deferrals: ${st.deferrals}`);
    assert.equal(st.bounced, 1);
    assert.equal(st.expired, 0);
    assert.equal(st.rejected, 2);
    assert.deepEqual(st.rejected_by_reason, [
      { name: 'RCPT 550 5.1.1 Recipient address rejected: User unknown in virtual mailbox table', count: 1 },
      { name: 'RCPT 554 5.7.1 Relay access denied', count: 1 },
    ]);
    assert.deepEqual(st.top_senders, [{ name: ALICE, count: 2 }, { name: 'bob@sender.test', count: 2 }, { name: '<>', count: 1 }]);
    assert.deepEqual(st.top_recipients, [{ name: ALICE, count: 3 }]);
    assert.equal(st.senders, 3);
    assert.equal(st.recipients, 1);
    assert.deepEqual(st.top_destinations.map((d: any) => [d.name, d.count]), [['example.test', 3]]);
    assert.ok(st.bytes_received > st.bytes_delivered && st.bytes_delivered > 0, JSON.stringify(st));
    assert.ok(st.delay.max >= st.delay.avg && st.delay.avg >= 0);
    assert.equal(st.skipped, 0);

    const text = inst.cli(['stats']).stdout;
    assert.match(text, /^ +5 {3}received$/m);
    assert.match(text, /^ +3 {3}delivered$/m);
    assert.match(text, /^ +1 {3}bounced$/m);
    assert.match(text, /^ +1 {3}RCPT 554 5\.7\.1 Relay access denied$/m);
  });
});

describe('postern stats on a hand-written log', () => {
  let inst: Instance;
  before(async () => {
    inst = await Instance.create({});
    const now = Date.now();
    const at = (minutesAgo: number) => new Date(now - minutesAgo * 60000).toISOString();
    const id1 = 'A'.repeat(20);
    const id2 = 'B'.repeat(20);
    const lines = [
      // three hours ago: one message received and delivered, one reject
      { level: 'info', time: at(180), service: 'cleanup', queue_id: id1, from: '<old@sender.test>', size: 1000, nrcpt: 1, msg: 'queued' },
      { level: 'info', time: at(179), service: 'lmtp', queue_id: id1, to: '<u@example.test>', relay: 'local', delay: 4, dsn: '2.0.0', status: 'sent', msg: 'sent (250 2.0.0 ok)' },
      { level: 'info', time: at(178), service: 'smtpd[127.0.0.1:25]', queue_id: 'NOQUEUE', status: 'reject', msg: 'reject: RCPT from x[192.0.2.1]: 554 5.7.1 <a@b.test>: Relay access denied' },
      // ten minutes ago: a message to two recipients, one delivered and one bounced
      { level: 'info', time: at(10), service: 'cleanup', queue_id: id2, from: '<new@sender.test>', size: 2000, nrcpt: 2, msg: 'queued' },
      { level: 'info', time: at(9), service: 'smtp', queue_id: id2, to: '<v@far.test>', relay: 'mx.far.test[192.0.2.7]:25', delay: 1.5, dsn: '2.0.0', status: 'sent', msg: 'sent (250 ok)' },
      { level: 'info', time: at(9), service: 'smtp', queue_id: id2, to: '<w@far.test>', relay: 'mx.far.test[192.0.2.7]:25', delay: 1.5, dsn: '5.1.1', status: 'bounced', msg: 'bounced (550 no)' },
      // qmgr's summary of the same bounce must not count twice
      { level: 'info', time: at(9), service: 'qmgr', queue_id: id2, from: '<new@sender.test>', to: '<w@far.test>', nrcpt: 1, status: 'bounced', msg: 'no DSN: test' },
      { level: 'info', time: at(9), service: 'qmgr', queue_id: id2, msg: 'removed' },
    ].map((l) => JSON.stringify(l));
    // a broken line and an overlong one are skipped, never buffered whole
    lines.splice(5, 0, '{"not json', JSON.stringify({ time: at(9), service: 'cleanup', msg: 'queued', queue_id: 'C'.repeat(20), pad: 'x'.repeat(200 * 1024) }));
    fs.writeFileSync(inst.logFile, lines.join('\n') + '\n');
  });
  after(async () => { await inst?.destroy(); });

  it('the whole log', () => {
    const st = stats(inst);
    assert.equal(st.since, null);
    assert.equal(st.lines, 10);
    assert.equal(st.skipped, 2);
    assert.equal(st.received, 2);
    assert.equal(st.bytes_received, 3000);
    assert.equal(st.delivered, 2);
    assert.equal(st.bytes_delivered, 3000);
    assert.equal(st.bounced, 1);
    assert.equal(st.rejected, 1);
    assert.deepEqual(st.delay, { avg: 2.75, max: 4 });
    assert.deepEqual(st.top_destinations, [
      { name: 'example.test', count: 1, avg_delay: 4, max_delay: 4 },
      { name: 'far.test', count: 1, avg_delay: 1.5, max_delay: 1.5 },
    ]);
  });

  it('--since 1h leaves the old lines out', () => {
    const st = stats(inst, ['--since', '1h']);
    assert.ok(Math.abs(Date.parse(st.since) - (Date.now() - 3600000)) < 600000, st.since);
    assert.equal(st.received, 1);
    assert.equal(st.bytes_received, 2000);
    assert.equal(st.delivered, 1);
    assert.equal(st.bounced, 1);
    assert.equal(st.rejected, 0);
    assert.deepEqual(st.rejected_by_reason, []);
    assert.deepEqual(st.top_senders, [{ name: 'new@sender.test', count: 1 }]);
    assert.deepEqual(st.top_recipients, [{ name: 'v@far.test', count: 1 }]);
    // --since 4h takes them all in again; 2d and 30m are durations too
    assert.equal(stats(inst, ['--since', '4h']).received, 2);
    assert.equal(stats(inst, ['--since', '2d']).received, 2);
    assert.equal(stats(inst, ['--since', '30m']).received, 1);
  });

  it('a --since that is not a duration is refused', () => {
    const r = inst.tryCli(['stats', '--since', 'yesterday']);
    assert.equal(r.code, 1);
    assert.equal(r.stderr.trim(), 'postern: --since: "yesterday" is not a duration (a number with s, m, h, d or w, as in main.cf: 30m, 1h, 2d)');
  });
});
