/**
 * Message authentication of mail from outside, end to end: a real DNS server
 * on loopback publishes SPF, DKIM and DMARC records; messages come over SMTP
 * from 127.0.0.1, which this instance does not count as its own network
 * (mynetworks = 192.0.2.0/24); the Authentication-Results: header in the
 * delivered copy is checked against what those records say. Then DMARC
 * policies (reject, quarantine, none), the optional SPF hard-fail rejection,
 * the removal of a forged Authentication-Results:, and backscatter
 * protection: a bounce goes only to a sender that authenticated.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { generateKeyPairSync } from 'node:crypto';
import { dkimSign } from 'mailauth';
import { Instance, RawSmtp, waitFor } from './harness.js';
import { TestDnsServer } from './dns-server.js';
import { decide } from '../../packages/smtpd/dist/message-auth.js';
import { HeaderSection } from '../../packages/cleanup/dist/header-section.js';
import { forgedAuthResults, authservId } from '../../packages/cleanup/dist/headers.js';

const HOST = 'mx.example.test';
const BOB = 'bob@example.test';          // receives the test messages
const ALICE = 'alice@example.test';      // an SPF-passing sender who can receive a bounce
const DAVE = 'dave@example.test';        // a mailbox that can never be written: every message to it bounces
const CAROL = 'carol@fail.test';         // an SPF-failing sender who could receive a bounce, if one were sent

const key = generateKeyPairSync('rsa', { modulusLength: 2048 });
const privateKey = key.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
const publicKey = (key.publicKey.export({ type: 'spki', format: 'der' }) as Buffer).toString('base64');

const records = [
  // the client: forward-confirmed reverse DNS, so client checks at connect let it in
  { name: '127.0.0.1', type: 'PTR' as const, value: 'client.example.net' },
  { name: 'client.example.net', type: 'A' as const, value: '127.0.0.1' },
  // SPF
  { name: 'pass.test', type: 'TXT' as const, value: 'v=spf1 ip4:127.0.0.1 -all' },
  { name: 'helo.pass.test', type: 'TXT' as const, value: 'v=spf1 ip4:127.0.0.1 -all' },
  { name: 'fail.test', type: 'TXT' as const, value: 'v=spf1 -all' },
  { name: 'soft.test', type: 'TXT' as const, value: 'v=spf1 ~all' },
  { name: 'example.test', type: 'TXT' as const, value: 'v=spf1 ip4:127.0.0.1 -all' },
  // DKIM and DMARC: signed.test asks for nothing (p=none); reject.test and quarantine.test do
  { name: 'sel._domainkey.signed.test', type: 'TXT' as const, value: `v=DKIM1; k=rsa; p=${publicKey}` },
  { name: '_dmarc.signed.test', type: 'TXT' as const, value: 'v=DMARC1; p=none' },
  { name: 'reject.test', type: 'TXT' as const, value: 'v=spf1 -all' },
  { name: 'sel._domainkey.reject.test', type: 'TXT' as const, value: `v=DKIM1; k=rsa; p=${publicKey}` },
  { name: '_dmarc.reject.test', type: 'TXT' as const, value: 'v=DMARC1; p=reject' },
  { name: 'quarantine.test', type: 'TXT' as const, value: 'v=spf1 -all' },
  { name: '_dmarc.quarantine.test', type: 'TXT' as const, value: 'v=DMARC1; p=quarantine' },
];

interface Sent { reply: string; id?: string }

/** One message over SMTP from 127.0.0.1; the reply to the end of DATA. */
async function send(inst: Instance, o: { from: string; to?: string; helo?: string; message: string }): Promise<Sent> {
  const c = await waitFor('smtpd to accept connections', () => RawSmtp.connect(inst.ports.smtp));
  try {
    for (const [line, code] of [[`EHLO ${o.helo ?? 'client.example.net'}`, '250'], [`MAIL FROM:<${o.from}>`, '250'],
      [`RCPT TO:<${o.to ?? BOB}>`, '250'], ['DATA', '354']]) {
      const reply = await c.command(line);
      assert.ok(reply.startsWith(code), `${line}: ${reply}`);
    }
    const reply = await c.command(`${o.message.replace(/\r?\n/g, '\r\n').replace(/^\./gm, '..')}\r\n.`);
    await c.command('QUIT');
    return { reply, id: /queued as ([0-9A-F]{20})/.exec(reply)?.[1] };
  } finally {
    c.close();
  }
}

function message(from: string, subject: string, extraHeaders = ''): string {
  return `${extraHeaders}From: <${from}>\r\nTo: <${BOB}>\r\nSubject: ${subject}\r\nDate: Wed, 25 Nov 2026 00:29:40 +0000\r\n`
    + `Message-ID: <${Date.now()}.${Math.random().toString(36).slice(2)}@client.example.net>\r\n\r\nHello Bob,\r\nsee you at noon.\r\n`;
}

async function signed(domain: string, msg: string): Promise<{ message: string; b: string }> {
  const res = await dkimSign(msg, {
    // mailauth 4.13 signs only with signatureData (its type declarations name the top-level form, which signs nothing)
    signatureData: [{ signingDomain: domain, selector: 'sel', privateKey, algorithm: 'rsa-sha256', canonicalization: 'relaxed/relaxed' }],
  } as unknown as Parameters<typeof dkimSign>[1]);
  assert.deepEqual(res.errors, []);
  const tags = res.signatures.replace(/^DKIM-Signature:/i, '').replace(/\s+/g, '');
  const b = /(?:^|;)b=([^;]{8})/.exec(tags)![1];
  // header.b is a MIME token; base64's "/" is a special, so such a value is quoted (RFC 8601 2.2)
  return { message: res.signatures + msg, b: b.includes('/') ? `"${b}"` : b };
}

/** The delivered copy of a queued message in the recipient's Maildir. */
async function deliveredCopy(inst: Instance, id: string, to = BOB): Promise<string> {
  const file = await waitFor(`delivery of ${id}`, () => inst.delivered(to).find((f) => new RegExp(` id ${id}\\r?\\n`).test(fs.readFileSync(f, 'latin1'))));
  return fs.readFileSync(file, 'utf8');
}

/** The header fields of a message, unfolded. */
function fields(text: string): { name: string; value: string }[] {
  const head = text.split(/\r?\n\r?\n/)[0];
  return head.replace(/\r?\n(?=[ \t])/g, '').split(/\r?\n/).map((l) => {
    const colon = l.indexOf(':');
    return { name: l.slice(0, colon), value: l.slice(colon + 1).trim() };
  });
}

/** Our Authentication-Results: value, unfolded to single spaces; asserts there is exactly one claiming our name. */
function ourResults(text: string): string {
  const ours = fields(text).filter((f) => /^authentication-results$/i.test(f.name) && /^mx\.example\.test;/i.test(f.value));
  assert.equal(ours.length, 1, `one Authentication-Results: from ${HOST} in:\n${text}`);
  return ours[0].value.replace(/\s+/g, ' ');
}

async function deliveredWith(inst: Instance, s: Sent): Promise<{ text: string; results: string }> {
  assert.ok(s.id, `accepted: ${s.reply}`);
  const text = await deliveredCopy(inst, s.id!);
  return { text, results: ourResults(text) };
}

const spfPass = (sender: string, helo = 'client.example.net') =>
  `spf=pass (${HOST}: domain of ${sender} designates 127.0.0.1 as permitted sender) smtp.mailfrom=${sender} smtp.helo=${helo}`;
const spfFail = (sender: string) =>
  `spf=fail (${HOST}: domain of ${sender} does not designate 127.0.0.1 as permitted sender) smtp.mailfrom=${sender} smtp.helo=client.example.net`;
const spfNone = (sender: string) => {
  const domain = sender.split('@')[1];
  return `spf=none (${HOST}: ${domain} does not designate permitted sender hosts) smtp.mailfrom=${sender} smtp.helo=client.example.net`;
};

describe('message authentication of mail from outside', () => {
  let dns: TestDnsServer;
  let inst: Instance;

  before(async () => {
    dns = await new TestDnsServer({ records }).start();
    inst = await Instance.create({
      users: [{ address: BOB }, { address: ALICE }, { address: DAVE }, { address: CAROL }],
      main: { dns_servers: dns.address, mynetworks: '192.0.2.0/24', virtual_mailbox_domains: 'fail.test' },
    });
    // dave's Maildir can never be made: its parent directory is a regular file
    const home = path.dirname(inst.maildir(DAVE));
    fs.mkdirSync(path.dirname(home), { recursive: true });
    fs.writeFileSync(home, 'a file where a directory must be\n');
    await inst.start();
  });

  after(async () => {
    await inst?.destroy();
    await dns?.close();
  });

  it('SPF pass: one Authentication-Results: with our host name, spf=pass for the MAIL FROM', async () => {
    const { results, text } = await deliveredWith(inst, await send(inst, { from: 'a@pass.test', message: message('a@pass.test', 'spf pass') }));
    assert.equal(results, `${HOST}; ${spfPass('a@pass.test')}; dkim=none (message not signed); dmarc=none header.from=pass.test; arc=none`);
    assert.ok(!/^X-Postern-Quarantine:/im.test(text));
    // ours goes in front of the message, above our Received:
    const names = fields(text).map((f) => f.name.toLowerCase());
    assert.ok(names.indexOf('authentication-results') < names.indexOf('received'), names.join(','));
  });

  it('SPF fail (-all) is reported and, by default, the message is still delivered', async () => {
    const { results } = await deliveredWith(inst, await send(inst, { from: 'b@fail.test', message: message('b@fail.test', 'spf fail') }));
    assert.equal(results, `${HOST}; ${spfFail('b@fail.test')}; dkim=none (message not signed); dmarc=none header.from=fail.test; arc=none`);
  });

  it('SPF softfail (~all)', async () => {
    const { results } = await deliveredWith(inst, await send(inst, { from: 'c@soft.test', message: message('c@soft.test', 'spf softfail') }));
    assert.equal(results, `${HOST}; spf=softfail (${HOST}: domain of transitioning c@soft.test does not designate 127.0.0.1 as permitted sender) `
      + 'smtp.mailfrom=c@soft.test smtp.helo=client.example.net; dkim=none (message not signed); dmarc=none header.from=soft.test; arc=none');
  });

  it('a null MAIL FROM is checked against the HELO name', async () => {
    const { results } = await deliveredWith(inst, await send(inst, { from: '', helo: 'helo.pass.test', message: message('mailer-daemon@pass.test', 'null sender') }));
    assert.ok(results.startsWith(`${HOST}; ${spfPass('postmaster@helo.pass.test', 'helo.pass.test')};`), results);
  });

  it('DKIM pass, aligned with From: DMARC pass', async () => {
    const { message: m, b } = await signed('signed.test', message('d@signed.test', 'dkim pass'));
    const { results } = await deliveredWith(inst, await send(inst, { from: 'd@signed.test', message: m }));
    assert.equal(results, `${HOST}; ${spfNone('d@signed.test')}; `
      + `dkim=pass header.d=signed.test header.s=sel header.a=rsa-sha256 header.b=${b}; `
      + 'dmarc=pass (p=NONE arc=none) header.from=signed.test header.d=signed.test; arc=none');
  });

  it('DKIM fail: a signed message altered on the way; DMARC fails, p=none delivers it unmarked', async () => {
    const { message: m, b } = await signed('signed.test', message('d@signed.test', 'dkim altered'));
    const altered = m.replace('see you at noon.', 'see you at one.');
    const { results, text } = await deliveredWith(inst, await send(inst, { from: 'd@signed.test', message: altered }));
    assert.equal(results, `${HOST}; ${spfNone('d@signed.test')}; `
      + `dkim=fail (body hash did not verify) header.d=signed.test header.s=sel header.a=rsa-sha256 header.b=${b}; `
      + 'dmarc=fail (p=NONE arc=none) header.from=signed.test header.d=signed.test; arc=none');
    assert.ok(!/^X-Postern-Quarantine:/im.test(text), 'p=none: no quarantine mark');
  });

  it('DMARC p=reject: a failing message gets 550 5.7.1 and nothing is delivered', async () => {
    const before = inst.delivered(BOB).length;
    const s = await send(inst, { from: 'e@reject.test', message: message('e@reject.test', 'dmarc reject') });
    assert.equal(s.reply, '550 5.7.1 Rejected by DMARC policy for reject.test');
    await inst.waitForLog('the rejection', (e) => /^reject: END-OF-MESSAGE/.test(e.msg) && /Rejected by DMARC policy for reject\.test/.test(e.msg));
    assert.ok(inst.logs().some((e) => e.msg === 'message authentication' && e.action === 'reject' && e.dmarc === 'fail'));
    // a message that passes under the same policy is delivered
    const { message: m, b } = await signed('reject.test', message('e@reject.test', 'dmarc reject, but signed'));
    const { results } = await deliveredWith(inst, await send(inst, { from: 'e@reject.test', message: m }));
    assert.equal(results, `${HOST}; ${spfFail('e@reject.test')}; `
      + `dkim=pass header.d=reject.test header.s=sel header.a=rsa-sha256 header.b=${b}; `
      + 'dmarc=pass (p=REJECT arc=none) header.from=reject.test header.d=reject.test; arc=none');
    assert.equal(inst.delivered(BOB).length, before + 1, 'only the passing message was delivered');
    // the delivered one leaves the queue once qmgr has recorded it; nothing of the rejected one was ever queued
    await waitFor('an empty queue', () => inst.queueEmpty());
    assert.equal(inst.logs().filter((e) => e.service === 'cleanup' && e.msg === 'queued' && e.from === '<e@reject.test>').length, 1,
      'cleanup committed only the passing message');
  });

  it('DMARC p=quarantine: a failing message is delivered with X-Postern-Quarantine', async () => {
    const { results, text } = await deliveredWith(inst, await send(inst, { from: 'f@quarantine.test', message: message('f@quarantine.test', 'dmarc quarantine') }));
    assert.equal(results, `${HOST}; ${spfFail('f@quarantine.test')}; dkim=none (message not signed); `
      + 'dmarc=fail (p=QUARANTINE arc=none) header.from=quarantine.test header.d=quarantine.test; arc=none');
    assert.deepEqual(fields(text).filter((f) => /^x-postern-quarantine$/i.test(f.name)).map((f) => f.value), ['dmarc (policy of quarantine.test)']);
  });

  it('an incoming Authentication-Results: that claims our host name is removed; others stay', async () => {
    const forged = `Authentication-Results: ${HOST}; dkim=pass header.d=pass.test\r\n`
      + 'Authentication-Results: relay.other.example;\r\n\tspf=pass smtp.mailfrom=a@pass.test\r\n'
      + `Authentication-Results: (a comment) "MX.EXAMPLE.TEST."; dmarc=pass\r\n`;
    const { results, text } = await deliveredWith(inst, await send(inst, { from: 'a@pass.test', message: message('a@pass.test', 'forged results', forged) }));
    assert.ok(results.startsWith(`${HOST}; ${spfPass('a@pass.test')}; dkim=none`), results);
    const all = fields(text).filter((f) => /^authentication-results$/i.test(f.name)).map((f) => f.value.replace(/\s+/g, ' '));
    assert.deepEqual(all, [results, 'relay.other.example; spf=pass smtp.mailfrom=a@pass.test']);
    await inst.waitForLog('the removal', (e) => e.service === 'cleanup' && /^removed Authentication-Results/.test(e.msg) && e.removed?.length === 2);
  });

  it('backscatter: a bounce goes to an SPF-authenticated sender, not to an unauthenticated one', async () => {
    // alice@example.test passes SPF: her undeliverable message comes back to her
    const ok = await send(inst, { from: ALICE, to: DAVE, message: message(ALICE, 'to a broken mailbox') });
    assert.ok(ok.id, ok.reply);
    await inst.waitForLog('the notification to alice', (e) => e.queue_id === ok.id && /^sender non-delivery notification: /.test(e.msg));
    const dsn = await waitFor('the bounce in alice\'s Maildir', () => inst.delivered(ALICE)[0]);
    assert.match(fs.readFileSync(dsn, 'utf8'), /^Subject: Undelivered Mail Returned to Sender$/m);

    // carol@fail.test fails SPF (and has no DKIM): her message bounces without a notification
    const bad = await send(inst, { from: CAROL, to: DAVE, message: message(CAROL, 'to a broken mailbox, unauthenticated') });
    assert.ok(bad.id, bad.reply);
    const line = await inst.waitForLog('the backscatter decision', (e) => e.queue_id === bad.id && e.status === 'bounced' && /^no DSN: /.test(e.msg));
    assert.equal(line.msg, 'no DSN: sender not authenticated (backscatter protection)');
    assert.equal(line.spf, 'fail');
    await inst.waitForLog('removal of the bounced message', (e) => e.queue_id === bad.id && e.msg === 'removed');
    assert.ok(!inst.logs().some((e) => e.queue_id === bad.id && /^sender non-delivery notification/.test(e.msg)));
    assert.deepEqual(inst.delivered(CAROL), [], 'carol got no notification');
    await waitFor('an empty queue', () => inst.queueEmpty());
  });

  it('smtpd_spf_hardfail_reject = yes refuses an SPF -all failure with 550 5.7.23', async () => {
    const reloads = inst.logs().filter((e) => e.msg === 'configuration reloaded').length;
    inst.cli(['config', 'set', 'smtpd_spf_hardfail_reject=yes']);
    inst.cli(['reload']);
    await waitFor('smtpd to reload', () => inst.logs().filter((e) => e.msg === 'configuration reloaded' && /^smtpd/.test(e.service)).length > 0
      && inst.logs().filter((e) => e.msg === 'configuration reloaded').length > reloads);
    const s = await waitFor('the new setting in force', async () => {
      const r = await send(inst, { from: 'g@fail.test', message: message('g@fail.test', 'spf hard fail') });
      return r.reply.startsWith('550') ? r : null;
    });
    assert.equal(s.reply, '550 5.7.23 Rejected by SPF policy for fail.test: 127.0.0.1 is not a permitted sender');
    // a passing sender is unaffected
    await deliveredWith(inst, await send(inst, { from: 'a@pass.test', message: message('a@pass.test', 'after reload') }));
  });
});

describe('message authentication pieces', () => {
  const dmarcFail = (policy: string, pct?: number) => ({
    spf: { domain: 'x.test', status: { result: 'fail' } },
    dkim: { headerFrom: ['a@x.test'], results: [] },
    dmarc: { domain: 'x.test', policy, p: policy, sp: policy, pct, status: { result: 'fail', header: { from: 'x.test', d: 'x.test' } } },
    arc: false, bimi: false, headers: '',
  }) as unknown as Parameters<typeof decide>[0];
  const on = { dmarcReject: true, dmarcQuarantine: true, spfHardfailReject: false };

  it('DMARC policy decisions: reject, reject turned off, quarantine turned off, pct sampling', () => {
    assert.equal(decide(dmarcFail('reject'), on, '192.0.2.1').reject?.message, '5.7.1 Rejected by DMARC policy for x.test');
    assert.equal(decide(dmarcFail('reject'), { ...on, dmarcReject: false }, '192.0.2.1').quarantine, 'X-Postern-Quarantine: dmarc (policy of x.test)\r\n');
    assert.deepEqual(decide(dmarcFail('quarantine'), { ...on, dmarcQuarantine: false }, '192.0.2.1'), {});
    assert.deepEqual(decide(dmarcFail('none'), on, '192.0.2.1'), {});
    // outside a pct=10 sample (the draw is 50): one step milder
    assert.ok(decide(dmarcFail('reject', 10), on, '192.0.2.1', () => 0.5).quarantine);
    assert.deepEqual(decide(dmarcFail('quarantine', 10), on, '192.0.2.1', () => 0.5), {});
    assert.ok(decide(dmarcFail('reject', 10), on, '192.0.2.1', () => 0.05).reject, 'inside the sample');
    assert.equal(decide(dmarcFail('none'), { ...on, spfHardfailReject: true }, '192.0.2.1').reject?.message,
      '5.7.23 Rejected by SPF policy for x.test: 192.0.2.1 is not a permitted sender');
  });

  it('cleanup drops Authentication-Results: claiming our name, whatever the chunking', () => {
    const msg = 'Authentication-Results: (c) MX.Example.Test.;\r\n dkim=pass\r\nAuthentication-Results: other.example; spf=pass\r\n'
      + 'From: a@b.test\r\nauthentication-results: "mx.example.test"; none\r\nSubject: x\r\n\r\n'
      + 'Authentication-Results: mx.example.test; this is the body\r\n';
    const want = 'Authentication-Results: other.example; spf=pass\r\nFrom: a@b.test\r\nSubject: x\r\n\r\n'
      + 'Authentication-Results: mx.example.test; this is the body\r\n';
    for (const size of [1, 2, 7, 64, msg.length]) {
      const f = new HeaderSection([{ drop: forgedAuthResults(HOST) }]);
      const out: Buffer[] = [];
      for (let i = 0; i < msg.length; i += size) out.push(...f.push(Buffer.from(msg.slice(i, i + size))));
      out.push(...f.end());
      assert.equal(Buffer.concat(out).toString(), want, `chunks of ${size}`);
      assert.equal(f.removed.length, 2);
    }
    assert.equal(authservId(' (a (nested) comment) host.example 1; spf=pass'), 'host.example');
    assert.equal(authservId('"quoted.example"; none'), 'quoted.example');
  });
});
