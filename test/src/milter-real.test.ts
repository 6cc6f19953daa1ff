/**
 * Real milters, configured as docs/milter.md says (the blocks are read from the
 * doc): OpenDKIM signing mail submitted with `postern sendmail` through
 * non_smtpd_milters (cleanup's milter session), checked by dkimpy against the
 * key published in the test DNS server; and nothing signed when
 * non_smtpd_milters is empty. Each milter is started once for the file.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Instance, ROOT, run, tempDir, waitFor, headerFields } from './harness.js';
import { TestDnsServer } from './dns-server.js';
import { dkimpyVerify } from './verifiers.js';
import { substitute, reloadAndWait } from './dovecot.js';
import { OpenDkim, milterMainCf } from './milters.js';

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

function sendmail(inst: Instance, from: string, to: string, subject: string): void {
  const message = `From: Alice <${from}>\nTo: Bob <${to}>\nSubject: ${subject}\n\nHello Bob,\nthis went through sendmail and pickup.\n`;
  const r = run(process.execPath, [SENDMAIL, '-C', inst.etc, '-f', from, to], { input: message });
  assert.equal(r.code, 0, `sendmail: ${r.stderr}`);
}

describe('real milters: OpenDKIM through non_smtpd_milters', () => {
  let dns: TestDnsServer;
  let opendkim: OpenDkim;
  let inst: Instance;

  before(async () => {
    dns = await new TestDnsServer().start();
    opendkim = await OpenDkim.start({ domain: 'example.test' });
    dns.add({ name: opendkim.txt.name, type: 'TXT', value: opendkim.txt.value });
    inst = await Instance.create({
      users: [{ address: ALICE }, { address: BOB }],
      main: { dns_servers: dns.address, ...mainCf({ opendkim: opendkim.address }) },
    });
    await inst.start();
  });

  after(async () => {
    await inst?.destroy();
    await opendkim?.stop();
    await dns?.close();
  });

  it('signs a message submitted with postern sendmail; dkimpy verifies the signature', async () => {
    sendmail(inst, ALICE, BOB, 'signed by opendkim via pickup');
    const { file, text } = await deliveredWith(inst, BOB, 'Subject: signed by opendkim via pickup');
    const sigs = headerFields(text).filter((h) => h.name === 'dkim-signature').map((h) => h.value);
    assert.equal(sigs.length, 1, `one DKIM-Signature from OpenDKIM in:\n${text}\nopendkim: ${opendkim.log()}`);
    assert.match(sigs[0], /\bd=example\.test;/);
    assert.match(sigs[0], /\bs=mail;/);
    const dir = tempDir('milter-verify');
    try {
      const copy = path.join(dir, 'message');
      fs.writeFileSync(copy, text);
      assert.deepEqual(await dkimpyVerify(copy, dns), [true], `dkimpy on ${file}`);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
    const queued = inst.logs().find((e) => e.service === 'cleanup' && e.msg === 'queued' && e.from === `<${ALICE}>`);
    assert.ok(queued, 'cleanup logged the message');
  });

  it('does not sign when non_smtpd_milters is empty', async () => {
    inst.cli(['config', 'set', 'non_smtpd_milters=']);
    await reloadAndWait(inst, ['cleanup']);
    try {
      sendmail(inst, ALICE, BOB, 'not signed without non_smtpd_milters');
      const { text } = await deliveredWith(inst, BOB, 'Subject: not signed without non_smtpd_milters');
      assert.equal(headerFields(text).filter((h) => h.name === 'dkim-signature').length, 0, text);
    } finally {
      inst.cli(['config', 'set', `non_smtpd_milters=${opendkim.address}`]);
      await reloadAndWait(inst, ['cleanup']);
    }
  });
});
