/**
 * DSN on request (issue 13 item 5, RFC 3461/3464), end to end: instance A
 * (a.test) takes RET/ENVID on MAIL and NOTIFY/ORCPT on RCPT, keeps them in the
 * queue file, passes them to a next hop that offers DSN (instance B, b.test,
 * or a recording SMTP server), and sends the notices the sender asked for:
 * success (delivered / relayed), none for NOTIFY=NEVER, headers only for
 * RET=HDRS. B's notices come back to alice at A by MX.
 */
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { EnvelopeSink } from './smtp-sink.js';
import { Instance, RawSmtp, waitFor } from './harness.js';
import { TestDnsServer } from './dns-server.js';

/** One message over SMTP to `port` from loopback (A's mynetworks); returns the queue id. */
export async function sendRaw(port: number, mail: string, rcpts: string[], subject: string): Promise<string> {
  const c = await RawSmtp.connect(port);
  try {
    assert.match(await c.command('EHLO client.a.test'), /^250/);
    assert.match(await c.command(`MAIL FROM:${mail}`), /^250 /, `MAIL FROM:${mail}`);
    for (const r of rcpts) assert.match(await c.command(`RCPT TO:${r}`), /^250 /, `RCPT TO:${r}`);
    assert.match(await c.command('DATA'), /^354/);
    const reply = await c.command(`From: alice@a.test\r\nTo: someone\r\nSubject: ${subject}\r\n\r\nbody of ${subject}\r\n.`);
    const id = /queued as ([0-9A-F]{20})/.exec(reply)?.[1];
    assert.ok(id, `queued: ${reply}`);
    return id;
  } finally {
    await c.command('QUIT').catch(() => undefined);
  }
}

/** The notices in alice's Maildir at A whose delivery report names this ENVID. */
function notices(a: Instance, envid: string): string[] {
  return a.delivered('alice@a.test').map((f) => fs.readFileSync(f, 'utf8')).filter((t) => t.includes(`Original-Envelope-Id: ${envid}\r\n`) || t.includes(`Original-Envelope-Id: ${envid}\n`));
}

/** The delivery-status part's per-recipient groups, each as name -> value (lower-case names). */
function recipientGroups(notice: string): Record<string, string>[] {
  const part = notice.split(/Content-Type: message\/delivery-status\r?\n\r?\n/)[1].split(/\r?\n--/)[0];
  return part.split(/\r?\n\r?\n/).slice(1).map((g) => Object.fromEntries(g.replace(/\r?\n[ \t]+/g, ' ').split(/\r?\n/).filter(Boolean)
    .map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()])));
}

/** The envelope JSON of a queue file. */
function queueEnvelope(file: string): any {
  const text = fs.readFileSync(file, 'latin1');
  const m = /^POSTERN-QUEUE 1\nE (\d+)\n/.exec(text)!;
  return JSON.parse(Buffer.from(text, 'latin1').subarray(m[0].length, m[0].length + Number(m[1])).toString('utf8'));
}

describe('DSN on request (RFC 3461): two instances', () => {
  let dns: TestDnsServer;
  let a: Instance;
  let b: Instance;
  let withDsn: EnvelopeSink;
  let withoutDsn: EnvelopeSink;

  before(async () => {
    a = await Instance.create({ domain: 'a.test', users: [{ address: 'alice@a.test' }] });
    b = await Instance.create({ domain: 'b.test', users: [{ address: 'bob@b.test' }] });
    // the next hops of the tests share B's port on their own loopback addresses (smtp_port is one for all)
    const port = b.ports.smtp;
    withDsn = await new EnvelopeSink('127.0.0.61', port, { dsn: true }).start();
    withoutDsn = await new EnvelopeSink('127.0.0.62', port, { dsn: false }).start();
    dns = await new TestDnsServer({ records: [
      { name: 'a.test', type: 'MX', value: { priority: 10, exchange: 'mx.a.test' } },
      { name: 'mx.a.test', type: 'A', value: '127.0.0.1' },
      { name: 'b.test', type: 'MX', value: { priority: 10, exchange: 'mx.b.test' } },
      { name: 'mx.b.test', type: 'A', value: '127.0.0.1' },
      { name: 'dsn.test', type: 'MX', value: { priority: 10, exchange: 'mx.dsn.test' } },
      { name: 'mx.dsn.test', type: 'A', value: '127.0.0.61' },
      { name: 'nodsn.test', type: 'MX', value: { priority: 10, exchange: 'mx.nodsn.test' } },
      { name: 'mx.nodsn.test', type: 'A', value: '127.0.0.62' },
      // nothing listens there: mail for it stays deferred in the queue
      { name: 'dead.test', type: 'MX', value: { priority: 10, exchange: 'mx.dead.test' } },
      { name: 'mx.dead.test', type: 'A', value: '127.0.0.63' },
    ] }).start();
    a.cli(['config', 'set', `dns_servers=${dns.address}`, `smtp_port=${b.ports.smtp}`, 'smtp_dead_destination_time=1s']);
    b.cli(['config', 'set', `dns_servers=${dns.address}`, `smtp_port=${a.ports.smtp}`]);
    await a.start();
    await b.start();
  });
  after(async () => {
    await a?.destroy(); await b?.destroy();
    await withDsn?.stop(); await withoutDsn?.stop();
    await dns?.close();
  });

  it('EHLO offers DSN; bad DSN parameters get 501 5.5.4 with the reason, unknown ones 555 5.5.4 (as Postfix)', async () => {
    const c = await RawSmtp.connect(a.ports.smtp);
    try {
      const ehlo = await c.command('EHLO client.a.test');
      assert.match(ehlo, /^250-DSN\r?$/m);
      assert.match(await c.command('MAIL FROM:<alice@a.test> RET=BODY'), /^501 5\.5\.4 .*RET/);
      assert.match(await c.command(`MAIL FROM:<alice@a.test> ENVID=${'x'.repeat(101)}`), /^501 5\.5\.4 Error: bad ENVID parameter/);
      assert.match(await c.command('MAIL FROM:<alice@a.test> ENVID=a+20b'), /^501 5\.5\.4 Error: bad ENVID parameter/);
      assert.match(await c.command('MAIL FROM:<alice@a.test> RET=HDRS RET=FULL'), /^501 5\.5\.4 Error: duplicate RET parameter/);
      assert.match(await c.command('MAIL FROM:<alice@a.test> FOO=bar'), /^555 5\.5\.4 Unsupported option: FOO\r?$/);
      assert.match(await c.command(`MAIL FROM:<alice@a.test> RET=HDRS ENVID=${'x'.repeat(100)}`), /^250 /);
      assert.match(await c.command('RCPT TO:<bob@b.test> NOTIFY=NEVER,SUCCESS'), /^501 5\.5\.4 Error: NOTIFY=NEVER cannot be combined/);
      assert.match(await c.command('RCPT TO:<bob@b.test> NOTIFY=SOMETIMES'), /^501 5\.5\.4 Error: NOTIFY parameter must be/);
      assert.match(await c.command('RCPT TO:<bob@b.test> NOTIFY=SUCCESS NOTIFY=FAILURE'), /^501 5\.5\.4 Error: duplicate NOTIFY parameter/);
      assert.match(await c.command('RCPT TO:<bob@b.test> ORCPT=bob@b.test'), /^501 5\.5\.4 Error: Bad ORCPT parameter syntax/);
      assert.match(await c.command(`RCPT TO:<bob@b.test> ORCPT=rfc822;${'b'.repeat(500)}@b.test`), /^501 5\.5\.4 Error: bad ORCPT parameter/);
      assert.match(await c.command('RCPT TO:<bob@b.test> XFOO'), /^555 5\.5\.4 Unsupported option: XFOO\r?$/);
      assert.match(await c.command('RCPT TO:<bob@b.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;bob@b.test'), /^250 /);
    } finally {
      c.close();
    }
  });

  it('RET, ENVID, NOTIFY and ORCPT are kept in the queue file', async () => {
    const id = await sendRaw(a.ports.smtp, '<alice@a.test> RET=HDRS ENVID=q+2Bfile-1',
      ['<one@dead.test> NOTIFY=SUCCESS,DELAY ORCPT=RFC822;first+2Bone@dead.test', '<two@dead.test> NOTIFY=NEVER', '<three@dead.test>'], 'kept in the queue file');
    const file = await waitFor('the message deferred', () => a.queued('deferred').find((f) => f.endsWith(id)), 20000);
    const env = queueEnvelope(file);
    assert.deepEqual(env.dsn, { ret: 'HDRS', envid: 'q+file-1' });
    assert.deepEqual(env.recipients, [
      { address: 'one@dead.test', notify: ['SUCCESS', 'DELAY'], orcpt: 'rfc822;first+one@dead.test' },
      { address: 'two@dead.test', notify: ['NEVER'] },
      { address: 'three@dead.test' },
    ]);
    assert.equal(env.requireTls, undefined);
    a.cli(['queue', 'delete', id]);
  });

  it('passed to a next hop that offers DSN: RET and ENVID on MAIL, NOTIFY and ORCPT on RCPT; no success notice from A', async () => {
    const id = await sendRaw(a.ports.smtp, '<alice@a.test> RET=FULL ENVID=pass-1',
      ['<one@dsn.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;Original+2Bone@dsn.test', '<two@dsn.test>'], 'passed on');
    const m = await waitFor('the message at the DSN next hop', () => withDsn.got('passed on'), 20000);
    assert.deepEqual(m.envelope.dsn, { ret: 'FULL', envid: 'pass-1' });
    assert.deepEqual(m.envelope.rcptTo.map((r: any) => [r.address, r.dsn]), [
      ['one@dsn.test', { notify: ['SUCCESS', 'DELAY'], orcpt: 'rfc822;Original+one@dsn.test' }],
      // no ORCPT from the client: the original recipient address, as Postfix
      ['two@dsn.test', { orcpt: 'rfc822;two@dsn.test' }],
    ]);
    await a.waitForLog('A removed the message', (e) => e.queue_id === id && e.msg === 'removed', 20000);
    assert.ok(!a.logs().some((e) => e.queue_id === id && /notification/.test(e.msg)), 'the next hop reports success, not A');
  });

  it('NOTIFY=SUCCESS through B: B delivers and sends the success notice (Action: delivered) with ENVID and ORCPT', async () => {
    const id = await sendRaw(a.ports.smtp, '<alice@a.test> RET=HDRS ENVID=through-b-1',
      ['<bob@b.test> NOTIFY=SUCCESS ORCPT=rfc822;robert+2Bold@b.test'], 'success through B');
    await waitFor('bob got it at B', () => b.delivered('bob@b.test').some((f) => fs.readFileSync(f, 'utf8').includes('Subject: success through B')), 30000);
    const [notice] = await waitFor('the success notice back at A', () => { const n = notices(a, 'through-b-1'); return n.length ? n : null; }, 30000);
    assert.match(notice, /^Subject: Successful Mail Delivery Report\r?$/m);
    assert.match(notice, /^Content-Type: multipart\/report; report-type=delivery-status;/m);
    assert.match(notice, /^Reporting-MTA: dns; mx\.b\.test\r?$/m);
    assert.deepEqual(recipientGroups(notice).map((g) => [g['final-recipient'], g['original-recipient'], g.action, g.status]),
      [['rfc822; bob@b.test', 'rfc822;robert+old@b.test', 'delivered', '2.0.0']]);
    assert.ok(!notice.includes('body of success through B'), 'a success notice returns the headers only');
    assert.ok(!a.logs().some((e) => e.queue_id === id && /notification/.test(e.msg)), 'A passed NOTIFY on, so B reports, not A');
  });

  it('NOTIFY=SUCCESS to a next hop without DSN: A sends Action: relayed; local delivery: Action: delivered', async () => {
    await sendRaw(a.ports.smtp, '<alice@a.test> ENVID=relayed-1', ['<one@nodsn.test> NOTIFY=SUCCESS', '<two@nodsn.test> NOTIFY=FAILURE'], 'relayed notice');
    const m = await waitFor('the message at the next hop without DSN', () => withoutDsn.got('relayed notice'), 20000);
    assert.deepEqual(m.envelope.rcptTo.map((r: any) => r.dsn), [undefined, undefined], 'no DSN parameters to a server that does not offer DSN');
    const [relayed] = await waitFor('the relayed notice', () => { const n = notices(a, 'relayed-1'); return n.length ? n : null; }, 20000);
    assert.deepEqual(recipientGroups(relayed).map((g) => [g['final-recipient'], g.action, g['remote-mta']]),
      [['rfc822; one@nodsn.test', 'relayed', 'dns; mx.nodsn.test']]);
    await sendRaw(a.ports.smtp, '<alice@a.test> ENVID=local-1', ['<alice@a.test> NOTIFY=SUCCESS'], 'local notice');
    const [local] = await waitFor('the delivered notice', () => { const n = notices(a, 'local-1'); return n.length ? n : null; }, 20000);
    assert.deepEqual(recipientGroups(local).map((g) => [g['final-recipient'], g.action]), [['rfc822; alice@a.test', 'delivered']]);
  });

  it('NOTIFY=NEVER and NOTIFY without FAILURE: no bounce for those recipients; RET=HDRS returns the headers only', async () => {
    // B refuses unknown users at RCPT: A bounces all three, and reports only the one that asked (by default)
    const id = await sendRaw(a.ports.smtp, '<alice@a.test> RET=HDRS ENVID=never-1',
      ['<nosuch1@b.test> NOTIFY=NEVER', '<nosuch2@b.test> NOTIFY=SUCCESS,DELAY', '<nosuch3@b.test> ORCPT=rfc822;nosuch3@b.test'], 'never and hdrs');
    await a.waitForLog('the bounce notice', (e) => e.queue_id === id && /^sender non-delivery notification/.test(e.msg), 30000);
    for (const n of [1, 2, 3]) await a.waitForLog(`nosuch${n} bounced`, (e) => e.queue_id === id && e.to === `<nosuch${n}@b.test>` && e.status === 'bounced');
    const [notice] = await waitFor('the bounce at alice', () => { const n = notices(a, 'never-1'); return n.length ? n : null; }, 20000);
    assert.deepEqual(recipientGroups(notice).map((g) => [g['final-recipient'], g['original-recipient'], g.action]),
      [['rfc822; nosuch3@b.test', 'rfc822;nosuch3@b.test', 'failed']]);
    assert.match(notice, /^Content-Type: text\/rfc822-headers\r?$/m);
    assert.match(notice, /^Subject: never and hdrs\r?$/m);
    assert.ok(!notice.includes('body of never and hdrs'), 'RET=HDRS: no body');
    await a.waitForLog('removed', (e) => e.queue_id === id && e.msg === 'removed');
    assert.equal(notices(a, 'never-1').length, 1);
    // all NEVER: no notice at all
    const quiet = await sendRaw(a.ports.smtp, '<alice@a.test> ENVID=never-2', ['<nosuch4@b.test> NOTIFY=NEVER'], 'never at all');
    await a.waitForLog('removed', (e) => e.queue_id === quiet && e.msg === 'removed', 30000);
    assert.ok(!a.logs().some((e) => e.queue_id === quiet && /notification/.test(e.msg)));
    assert.equal(notices(a, 'never-2').length, 0);
  });

  it('RET=FULL returns the whole message', async () => {
    const id = await sendRaw(a.ports.smtp, '<alice@a.test> RET=FULL ENVID=full-1', ['<nosuch5@b.test>'], 'full return');
    await a.waitForLog('the bounce notice', (e) => e.queue_id === id && /^sender non-delivery notification/.test(e.msg), 30000);
    const [notice] = await waitFor('the bounce at alice', () => { const n = notices(a, 'full-1'); return n.length ? n : null; }, 20000);
    assert.match(notice, /^Content-Type: message\/rfc822\r?$/m);
    assert.ok(notice.includes('body of full return'));
  });
});
