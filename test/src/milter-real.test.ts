/**
 * Real milters, configured as docs/milter.md says (the blocks are read from the
 * doc): over SMTP (smtpd_milters), OpenDKIM signing a submission on 587 (AUTH),
 * rspamd refusing GTUBE with its own reply and adding its headers to what it lets
 * through; OpenDKIM signing mail submitted with `postern sendmail` through
 * non_smtpd_milters (cleanup's milter session), checked by dkimpy against the
 * key published in the test DNS server, and nothing signed when
 * non_smtpd_milters is empty; spamass-milter adding SpamAssassin's headers;
 * rspamd refusing GTUBE (local mail: bounced with rspamd's reply). Each milter
 * is started once for the file.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Instance, RawSmtp, ROOT, freePort, run, tempDir, waitFor, headerFields, submitAs } from './harness.js';
import { TestDnsServer } from './dns-server.js';
import { dkimpyVerify } from './verifiers.js';
import { substitute, reloadAndWait } from './dovecot.js';
import { OpenDkim, Rspamd, SpamassMilter, milterMainCf } from './milters.js';

const GTUBE = 'XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X';

const ALICE = 'alice@example.test';
const BOB = 'bob@example.test';
const SENDMAIL = path.join(ROOT, 'bin', 'sendmail');

/** docs/milter.md's main.cf, its milter addresses put on the ports the test's milters listen on. */
function mainCf(ports: { opendkim: string; rspamd?: string }): Record<string, string> {
  const m = milterMainCf();
  const subs: [string, string][] = [['inet:127.0.0.1:8891', ports.opendkim]];
  const put = (v: string) => substitute(v, subs.filter(([from]) => v.includes(from)), 'docs/milter.md main.cf');
  return {
    smtpd_milters: ports.rspamd ? put(m.smtpd_milters).replace('inet:127.0.0.1:11332', ports.rspamd) : '',
    non_smtpd_milters: put(m.non_smtpd_milters),
    milter_default_action: m.milter_default_action,
  };
}

/** The delivered copy whose text contains marker (bounded wait). */
async function deliveredWith(inst: Instance, address: string, marker: string): Promise<{ file: string; text: string }> {
  return waitFor(`a message with "${marker}" in ${address}'s Maildir`, () => {
    for (const file of inst.delivered(address)) {
      const text = fs.readFileSync(file, 'utf8');
      if (text.includes(marker)) return { file, text };
    }
    return null;
  }, 30000);
}

function sendmail(inst: Instance, from: string, to: string, subject: string, body = 'Hello Bob,\nthis went through sendmail and pickup.\n'): void {
  const message = `From: Alice <${from}>\nTo: Bob <${to}>\nSubject: ${subject}\n\n${body}`;
  const r = run(process.execPath, [SENDMAIL, '-C', inst.etc, '-f', from, to], { input: message });
  assert.equal(r.code, 0, `sendmail: ${r.stderr}`);
}

const dkimSignatures = (text: string) => headerFields(text).filter((h) => h.name === 'dkim-signature').map((h) => h.value);

async function verifies(text: string, dns: TestDnsServer): Promise<boolean[]> {
  const dir = tempDir('milter-verify');
  try {
    const copy = path.join(dir, 'message');
    fs.writeFileSync(copy, text);
    return await dkimpyVerify(copy, dns);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

describe('real milters from docs/milter.md', () => {
  let dns: TestDnsServer;
  let opendkim: OpenDkim;
  let rspamd: Rspamd;
  let spamass: SpamassMilter;
  let inst: Instance;

  /** non_smtpd_milters for the next submissions (cleanup re-reads main.cf on reload). */
  async function nonSmtpdMilters(value: string): Promise<void> {
    inst.cli(['config', 'set', `non_smtpd_milters=${value}`]);
    await reloadAndWait(inst, ['cleanup']);
  }

  before(async () => {
    dns = await new TestDnsServer().start();
    // rspamd compiles its rules for a while: the three start side by side
    const started = await Promise.allSettled([
      OpenDkim.start({ domain: 'example.test' }), Rspamd.start({ dns: dns.address }), SpamassMilter.start()]);
    // keep what did start, so after() stops it even when another one failed
    if (started[0].status === 'fulfilled') opendkim = started[0].value;
    if (started[1].status === 'fulfilled') rspamd = started[1].value;
    if (started[2].status === 'fulfilled') spamass = started[2].value;
    const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    dns.add({ name: opendkim.txt.name, type: 'TXT', value: opendkim.txt.value });
    inst = await Instance.create({
      users: [{ address: ALICE }, { address: BOB }],
      main: { dns_servers: dns.address, ...mainCf({ opendkim: opendkim.address, rspamd: rspamd.address }) },
    });
    await inst.start();
  });

  after(async () => {
    await inst?.destroy();
    await Promise.all([opendkim?.stop(), rspamd?.stop(), spamass?.stop()]);
    await dns?.close();
  });

  it('smtpd_milters: OpenDKIM signs a submission on 587 (AUTH); dkimpy verifies it', async () => {
    const id = await submitAs(inst, ALICE, 'secret', BOB, 'submitted on 587 and signed by opendkim');
    const { text } = await deliveredWith(inst, BOB, 'Subject: submitted on 587 and signed by opendkim');
    assert.match(text, new RegExp(` id ${id}\\r?\\n`), 'the message the submission queued');
    const sigs = dkimSignatures(text);
    assert.equal(sigs.length, 1, `one DKIM-Signature from OpenDKIM in:\n${text}`);
    assert.match(sigs[0], /\bd=example\.test;/);
    assert.deepEqual(await verifies(text, dns), [true], 'dkimpy verifies the delivered copy');
  });

  it('smtpd_milters: rspamd refuses GTUBE at the end of DATA with its own reply; nothing is queued', async () => {
    const c = await RawSmtp.connect(inst.ports.smtp);
    try {
      for (const [line, code] of [['EHLO client.sender.test', '250'], ['MAIL FROM:<someone@sender.test>', '250'], [`RCPT TO:<${BOB}>`, '250'], ['DATA', '354']]) {
        const r = await c.command(line);
        assert.ok(r.startsWith(code), `${line}: ${r}`);
      }
      const reply = await c.command(`From: <someone@sender.test>\r\nTo: <${BOB}>\r\nSubject: gtube over smtp\r\n\r\n${GTUBE}\r\n.`);
      assert.equal(reply, '554 5.7.1 Gtube pattern', `rspamd's reply; rspamd: ${rspamd.log().slice(-2000)}`);
      await c.command('QUIT');
    } finally {
      c.close();
    }
    // the log line reaches the file through master a moment after the reply
    await waitFor('smtpd\'s log of the milter\'s refusal', () => inst.logs().find((e) => /^milter-reject: /.test(e.msg) && /Gtube pattern/.test(e.msg)));
    assert.ok(!inst.delivered(BOB).some((f) => fs.readFileSync(f, 'utf8').includes('Subject: gtube over smtp')));
  });

  it('smtpd_milters: rspamd adds its headers to a message it lets through', async () => {
    const c = await RawSmtp.connect(inst.ports.smtp);
    try {
      for (const line of ['EHLO client.sender.test', 'MAIL FROM:<someone@sender.test>', `RCPT TO:<${BOB}>`, 'DATA']) await c.command(line);
      const reply = await c.command(`From: <someone@sender.test>\r\nTo: <${BOB}>\r\nSubject: lunch checked by rspamd\r\n\r\nShall we meet at noon on Friday?\r\n.`);
      assert.match(reply, /^250 /, reply);
      await c.command('QUIT');
    } finally {
      c.close();
    }
    const { text } = await deliveredWith(inst, BOB, 'Subject: lunch checked by rspamd');
    const result = headerFields(text).find((h) => h.name === 'x-spamd-result');
    assert.ok(result, `X-Spamd-Result: in:\n${text}`);
    assert.match(result.value, /^default: False \[/, 'not spam');
  });

  it('non_smtpd_milters: OpenDKIM signs a message submitted with postern sendmail; dkimpy verifies it', async () => {
    sendmail(inst, ALICE, BOB, 'signed by opendkim via pickup');
    const { text } = await deliveredWith(inst, BOB, 'Subject: signed by opendkim via pickup');
    const sigs = dkimSignatures(text);
    assert.equal(sigs.length, 1, `one DKIM-Signature from OpenDKIM in:\n${text}\nopendkim: ${opendkim.log()}`);
    assert.match(sigs[0], /\bd=example\.test;/);
    assert.match(sigs[0], /\bs=mail;/);
    assert.deepEqual(await verifies(text, dns), [true], 'dkimpy verifies the delivered copy');
  });

  it('non_smtpd_milters empty: the same submission is not signed', async () => {
    await nonSmtpdMilters('');
    try {
      sendmail(inst, ALICE, BOB, 'not signed without non_smtpd_milters');
      const { text } = await deliveredWith(inst, BOB, 'Subject: not signed without non_smtpd_milters');
      assert.equal(dkimSignatures(text).length, 0, text);
    } finally {
      await nonSmtpdMilters(opendkim.address);
    }
  });

  it('non_smtpd_milters: a milter that is down keeps the submission in maildrop/ (tempfail) until it answers', async () => {
    const closed = await freePort(); // nothing listens there
    await nonSmtpdMilters(`inet:127.0.0.1:${closed}`);
    try {
      sendmail(inst, ALICE, BOB, 'waits for its milter');
      await inst.waitForLog('cleanup to apply the default action', (e) => e.service === 'cleanup'
        && e.msg === 'milter failed; applying its default action' && e.default_action === 'tempfail' && e.milter === `inet:127.0.0.1:${closed}`);
      await inst.waitForLog('pickup to keep the file', (e) => e.service === 'pickup' && e.msg === 'message not queued; will retry');
      assert.ok(fs.readdirSync(path.join(inst.spool, 'maildrop')).length >= 1, 'the submission is still in maildrop/');
      assert.ok(!inst.delivered(BOB).some((f) => fs.readFileSync(f, 'utf8').includes('Subject: waits for its milter')), 'not delivered unchecked');
    } finally {
      await nonSmtpdMilters(opendkim.address);
    }
    // pickup tries again (its back-off is bounded) and now OpenDKIM answers
    const { text } = await deliveredWith(inst, BOB, 'Subject: waits for its milter');
    assert.equal(dkimSignatures(text).length, 1, `signed once its milter answers:\n${text}`);
  });

  it('spamass-milter adds SpamAssassin\'s X-Spam-* header fields to a delivered message', async () => {
    await nonSmtpdMilters(spamass.address);
    try {
      sendmail(inst, ALICE, BOB, 'checked by spamass-milter');
      const { text } = await deliveredWith(inst, BOB, 'Subject: checked by spamass-milter');
      const names = headerFields(text).map((h) => h.name);
      assert.ok(names.includes('x-spam-checker-version'), `X-Spam-Checker-Version: in:\n${text}\nspamass-milter: ${spamass.log()}`);
      assert.match(headerFields(text).find((h) => h.name === 'x-spam-status')?.value ?? '', /^No, score=/, text);
    } finally {
      await nonSmtpdMilters(opendkim.address);
    }
  });

  it('rspamd refuses GTUBE: local mail is bounced to its sender with rspamd\'s reply, never delivered', async () => {
    await nonSmtpdMilters(rspamd.address);
    try {
      sendmail(inst, ALICE, BOB, 'gtube through rspamd', `${GTUBE}\n`);
      const bounce = await deliveredWith(inst, ALICE, 'Subject: gtube through rspamd');
      assert.match(bounce.text, /554 5\.7\.1 Gtube pattern/, `rspamd's reply in the bounce:\n${bounce.text}\nrspamd: ${rspamd.log().slice(-2000)}`);
      const bounced = await inst.waitForLog('cleanup\'s bounce line', (e) => e.service === 'cleanup' && /^message bounced: milter-reject by inet:127\.0\.0\.1:\d+: 554 5\.7\.1 Gtube pattern/.test(e.msg));
      assert.ok(bounced, 'cleanup logged the milter\'s refusal');
      assert.ok(!inst.delivered(BOB).some((f) => fs.readFileSync(f, 'utf8').includes('Subject: gtube through rspamd')), 'not delivered to bob');
      // the bounce itself never went through non_smtpd_milters: rspamd (skip_local = false) would have marked it
      assert.equal(headerFields(bounce.text).filter((h) => h.name.startsWith('x-spamd-') || h.name.startsWith('x-rspamd-')).length, 0,
        `no rspamd header on the bounce:\n${bounce.text}`);
    } finally {
      await nonSmtpdMilters(opendkim.address);
    }
  });
});
