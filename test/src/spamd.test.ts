/**
 * Spam filtering with SpamAssassin's own spamd (Debian spamd), started here on
 * loopback with network tests off: the GTUBE message scores far above
 * spam_reject_score and is refused at the end of DATA; a normal message is
 * delivered with spamd's X-Spam-* headers; a message over spamd_max_size, a
 * spamd that never answers, and a stopped spamd all mean the message passes
 * unchecked, logged, never refused or lost. Mail comes from 127.0.0.1, which
 * this instance does not count as its own network.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { Instance, RawSmtp, waitFor } from './harness.js';
import { Spamd } from './spamd.js';
import { TestDnsServer } from './dns-server.js';
import { askSpamd, parseSpamdAddress, spamHeaderFields } from '../../packages/smtpd/dist/spamd.js';

const BOB = 'bob@example.test';
const GTUBE = 'XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X';

async function send(inst: Instance, message: string): Promise<{ reply: string; id?: string }> {
  const c = await waitFor('smtpd to accept connections', () => RawSmtp.connect(inst.ports.smtp));
  try {
    for (const [line, code] of [['EHLO client.example.net', '250'], ['MAIL FROM:<someone@sender.test>', '250'],
      [`RCPT TO:<${BOB}>`, '250'], ['DATA', '354']]) {
      const reply = await c.command(line);
      assert.ok(reply.startsWith(code), `${line}: ${reply}`);
    }
    const reply = await c.command(`${message.replace(/\r?\n/g, '\r\n').replace(/^\./gm, '..')}\r\n.`);
    await c.command('QUIT');
    return { reply, id: /queued as ([0-9A-F]{20})/.exec(reply)?.[1] };
  } finally {
    c.close();
  }
}

function message(subject: string, body: string): string {
  return `From: Someone <someone@sender.test>\r\nTo: Bob <${BOB}>\r\nSubject: ${subject}\r\nDate: Wed, 25 Nov 2026 00:29:40 +0000\r\n`
    + `Message-ID: <${Date.now()}.${Math.random().toString(36).slice(2)}@sender.test>\r\nMIME-Version: 1.0\r\n`
    + `Content-Type: text/plain; charset=us-ascii\r\n\r\n${body}\r\n`;
}

const lunch = (n: number) => message(`Lunch on Friday (${n})`, 'Hi Bob,\r\n\r\nshall we meet at the usual place at noon on Friday?\r\n\r\nSomeone');

async function delivered(inst: Instance, id: string): Promise<string> {
  const file = await waitFor(`delivery of ${id}`, () => inst.delivered(BOB).find((f) => new RegExp(` id ${id}\\r?\\n`).test(fs.readFileSync(f, 'latin1'))));
  return fs.readFileSync(file, 'utf8');
}

function headerSection(text: string): string {
  return text.split(/\r?\n\r?\n/)[0].replace(/\r?\n(?=[ \t])/g, ' ');
}

/** Change main.cf and wait until the port 25 smtpd has re-read it. */
async function reconfigure(inst: Instance, settings: Record<string, string>): Promise<void> {
  const service = `smtpd[127.0.0.1:${inst.ports.smtp}]`;
  const count = () => inst.logs().filter((e) => e.service === service && e.msg === 'configuration reloaded').length;
  const before = count();
  inst.cli(['config', 'set', ...Object.entries(settings).map(([k, v]) => `${k}=${v}`)]);
  inst.cli(['reload']);
  await waitFor('smtpd to reload its configuration', () => count() > before);
}

describe('spam filtering with spamd', () => {
  let spamd: Spamd;
  let dns: TestDnsServer;
  let inst: Instance;

  before(async () => {
    spamd = await Spamd.start();
    dns = await new TestDnsServer({ records: [
      { name: '127.0.0.1', type: 'PTR', value: 'client.example.net' },
      { name: 'client.example.net', type: 'A', value: '127.0.0.1' },
    ] }).start();
    inst = await Instance.create({
      users: [{ address: BOB }],
      main: { dns_servers: dns.address, mynetworks: '192.0.2.0/24', spamd_address: `127.0.0.1:${spamd.port}`, spamd_max_size: '4000' },
    });
    await inst.start();
  });

  after(async () => {
    await inst?.destroy();
    await dns?.close();
    await spamd?.stop();
  });

  it('speaks SPAMC/1.5 HEADERS to spamd directly', async () => {
    const v = await askSpamd(parseSpamdAddress(`127.0.0.1:${spamd.port}`)!, [Buffer.from(message('GTUBE', GTUBE))], 60000);
    assert.equal(v.spam, true);
    assert.ok(v.score > v.threshold, `spam: ${v.score} over ${v.threshold}`);
    assert.match(v.headers.replace(/\r\n[ \t]+/g, ' '), /^X-Spam-Status: Yes, score=.* tests=GTUBE,/m);
    assert.match(v.headers, /^X-Spam-Flag: YES\r$/m);
    assert.match(v.headers, /^X-Spam-Status: Yes, score=/m);
    assert.ok(v.headers.split('\r\n').filter(Boolean).every((l) => /^(X-Spam-[A-Za-z-]+:|[ \t])/.test(l)), 'only X-Spam-* fields');
  });

  it('a normal message is delivered with spamd\'s X-Spam-Status: No', async () => {
    const s = await send(inst, lunch(1));
    assert.ok(s.id, s.reply);
    const head = headerSection(await delivered(inst, s.id!));
    assert.match(head, /^X-Spam-Status: No, score=-?\d+\.\d+ required=5\.0 /m);
    assert.match(head, /^X-Spam-Checker-Version: SpamAssassin /m);
    assert.ok(!/^X-Spam-Flag:/m.test(head), 'no spam flag');
    const line = await inst.waitForLog('the spam verdict logged', (e) => e.msg?.startsWith('spam check: score') && e.action === 'accept');
    assert.ok(line, 'the verdict is logged');
  });

  it('the GTUBE message scores above spam_reject_score: 550 5.7.1, nothing delivered', async () => {
    const before = inst.delivered(BOB).length;
    const s = await send(inst, message('Test spam mail (GTUBE)', `This is the GTUBE.\r\n\r\n${GTUBE}\r\n`));
    assert.equal(s.reply, '550 5.7.1 Message rejected as spam');
    const line = await inst.waitForLog('the spam verdict', (e) => e.action === 'reject' && e.msg?.startsWith('spam check: score'));
    assert.equal(line.spam_reject_score, 10);
    assert.ok(line.score >= line.spam_reject_score, `score ${line.score} logged`);
    await inst.waitForLog('the rejection', (e) => /^reject: END-OF-MESSAGE .*550 5\.7\.1 Message rejected as spam/.test(e.msg));
    assert.equal(inst.delivered(BOB).length, before);
    await waitFor('an empty queue', () => inst.queueEmpty());
  });

  it('a message larger than spamd_max_size passes unchecked', async () => {
    const big = message('A long letter', `${GTUBE}\r\n${'All work and no play makes Jack a dull boy.\r\n'.repeat(100)}`);
    const s = await send(inst, big);
    assert.ok(s.id, `accepted unchecked: ${s.reply}`);
    const head = headerSection(await delivered(inst, s.id!));
    assert.ok(!/^X-Spam-/m.test(head), 'spamd never saw it');
    await inst.waitForLog('the skipped check logged', (e) => e.msg === 'spam check skipped: message larger than spamd_max_size' && e.spamd_max_size === 4000);
  });

  it('a spamd that never answers: the message passes after spamd_timeout, logged', async () => {
    const silent = net.createServer((sock) => { sock.on('error', () => undefined); }); // accepts, reads, never replies
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()));
    try {
      await reconfigure(inst, { spamd_address: `127.0.0.1:${(silent.address() as net.AddressInfo).port}`, spamd_timeout: '1s' });
      const s = await send(inst, lunch(2));
      assert.ok(s.id, s.reply);
      assert.ok(!/^X-Spam-/m.test(headerSection(await delivered(inst, s.id!))));
      const line = await inst.waitForLog('the pass', (e) => e.msg === 'spamd unavailable; message passes unchecked' && /no answer within 1 s/.test(e.err));
      assert.ok(line.client);
    } finally {
      silent.close();
    }
  });

  it('spamd stopped: mail is still delivered, and the outage is logged', async () => {
    await spamd.stop();
    await reconfigure(inst, { spamd_address: `127.0.0.1:${spamd.port}`, spamd_timeout: '30s' });
    const s = await send(inst, lunch(3));
    assert.ok(s.id, s.reply);
    assert.ok(!/^X-Spam-/m.test(headerSection(await delivered(inst, s.id!))));
    await inst.waitForLog('the outage', (e) => e.msg === 'spamd unavailable; message passes unchecked' && e.err === 'ECONNREFUSED');
  });
});

describe('spamd reply parsing', () => {
  it('keeps only X-Spam-* fields, folded lines together, with CRLF endings', () => {
    const section = 'Received: from localhost by vm\r\n\twith SpamAssassin\r\nX-Spam-Flag: YES\r\nX-Spam-Status: Yes, score=1003.3 required=5.0 tests=GTUBE,\n\tNO_RELAYS\r\nSubject: x\r\n\r\n';
    assert.equal(spamHeaderFields(section), 'X-Spam-Flag: YES\r\nX-Spam-Status: Yes, score=1003.3 required=5.0 tests=GTUBE,\r\n\tNO_RELAYS\r\n');
  });

  it('parses spamd_address forms', () => {
    assert.deepEqual(parseSpamdAddress('127.0.0.1:783'), { host: '127.0.0.1', port: 783 });
    assert.deepEqual(parseSpamdAddress('[::1]:7830'), { host: '::1', port: 7830 });
    assert.deepEqual(parseSpamdAddress('localhost'), { host: 'localhost', port: 783 });
    assert.deepEqual(parseSpamdAddress('/run/spamd.sock'), { path: '/run/spamd.sock' });
    assert.equal(parseSpamdAddress('127.0.0.1:99999'), null);
    assert.equal(parseSpamdAddress('spamd host'), null);
  });
});
