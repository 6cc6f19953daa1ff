/**
 * Two Postern servers on loopback (issue 3): a user of a.test submits on
 * 587, instance A signs with the key `postern dkim keygen` made and delivers
 * by MX to instance B (b.test), found through a DNS server on loopback that
 * serves MX, A, TXT (SPF, DKIM) and PTR. The copy in B's Maildir carries a
 * signature that independent verifiers accept.
 */
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import nodemailer from 'nodemailer';
import { Instance, waitFor } from './harness.js';
import { TestDnsServer } from './dns-server.js';
import { dkimpyVerify, mailDkimVerify } from './verifiers.js';

describe('a.test delivers to b.test by MX, DKIM-signed', () => {
  let dns: TestDnsServer;
  let a: Instance;
  let b: Instance;

  before(async () => {
    dns = await new TestDnsServer({ records: [
      { name: 'a.test', type: 'MX', value: { priority: 10, exchange: 'mx.a.test' } },
      { name: 'mx.a.test', type: 'A', value: '127.0.0.1' },
      { name: 'a.test', type: 'TXT', value: 'v=spf1 ip4:127.0.0.0/8 -all' },
      { name: '_dmarc.a.test', type: 'TXT', value: 'v=DMARC1; p=reject' },
      { name: '127.0.0.1', type: 'PTR', value: 'mx.a.test' },
      { name: 'b.test', type: 'MX', value: { priority: 10, exchange: 'mx.b.test' } },
      { name: 'mx.b.test', type: 'A', value: '127.0.0.1' },
    ] }).start();
    b = await Instance.create({ domain: 'b.test', users: [{ address: 'bob@b.test' }],
      // A's connections come from outside B's trusted networks, as on the internet
      main: { dns_servers: dns.address, mynetworks: '10.255.0.0/16' } });
    await b.start();
    a = await Instance.create({ domain: 'a.test', users: [{ address: 'alice@a.test', password: 'pw-alice' }],
      main: { dns_servers: dns.address, smtp_port: String(b.ports.smtp) } });
    const keys = JSON.parse(a.cli(['dkim', 'keygen', 'a.test', '--selector', 'sel1', '--json']).stdout);
    const listed = a.cli(['dkim', 'list', '--json']).stdout.trim().split('\n').map((l) => JSON.parse(l));
    const row = listed.find((r: any) => r.selector === 'sel1');
    assert.ok(row, `dkim list shows the new key: ${JSON.stringify(keys)}`);
    const txt = row.dnsValue ?? row.txt ?? row.record ?? row.value;
    assert.ok(typeof txt === 'string' && txt.startsWith('v=DKIM1'), `a DNS value to publish in ${JSON.stringify(row)}`);
    dns.add({ name: 'sel1._domainkey.a.test', type: 'TXT', value: txt });
    await a.start();
  });
  after(async () => { await a?.destroy(); await b?.destroy(); await dns?.close(); });

  /** alice@a.test submits on A's 587; the copy of this message in bob's Maildir at B, and A's queue id. */
  async function acrossToB(subject: string): Promise<{ id: string; file: string; text: string }> {
    const t = nodemailer.createTransport({ host: '127.0.0.1', port: a.ports.submission, secure: false, requireTLS: true,
      auth: { user: 'alice@a.test', pass: 'pw-alice' }, tls: { rejectUnauthorized: false } });
    const info = await t.sendMail({ from: 'alice@a.test', to: 'bob@b.test', subject, text: 'Hello Bob,\nthis went A -> B by MX.\n' });
    const id = /queued as ([0-9A-F]{20})/.exec(info.response)?.[1];
    assert.ok(id, `A accepted the message: ${info.response}`);
    const subjectLine = new RegExp(`^Subject: ${subject}\\r?$`, 'm');
    const file = await waitFor(`"${subject}" in B`, () => b.delivered('bob@b.test').find((f) => subjectLine.test(fs.readFileSync(f, 'utf8'))), 30000);
    return { id, file, text: fs.readFileSync(file, 'utf8') };
  }

  it('lands in B\'s Maildir with a signature dkimpy and Mail::DKIM accept, and B\'s checks pass', async () => {
    const { id, file, text } = await acrossToB('across two servers');
    assert.match(text, /^DKIM-Signature: .*d=a\.test/m);
    assert.match(text, /s=sel1/);
    assert.deepEqual(await dkimpyVerify(file, dns), [true]);
    assert.deepEqual(await mailDkimVerify(file, dns), ['sel1 pass']);
    // B saw A's verified reverse name and recorded the hop
    assert.match(text, /Received: from mx\.a\.test \(mx\.a\.test \[127\.0\.0\.1\]\)/);
    const sent = await a.waitForLog('A logs the delivery', (e) => e.queue_id === id && e.status === 'sent' && e.to === '<bob@b.test>');
    assert.match(sent.relay, /mx\.b\.test\[127\.0\.0\.1\]/);
    await waitFor('A\'s queue empty', () => a.queueEmpty(), 10000);
  });

  it('B verifies SPF, DKIM and DMARC and says so in Authentication-Results', async () => {
    const { file, text } = await acrossToB('authentication results at B');
    // an independent verifier first: when B's verdict below is wrong, this tells whether A's signature was good
    assert.deepEqual(await dkimpyVerify(file, dns), [true], 'dkimpy accepts the copy B stored');
    // the header section unfolded: one field a line
    const fields = text.split(/\r?\n\r?\n/)[0].replace(/\r?\n(?=[ \t])/g, '').split(/\r?\n/);
    const results = fields.filter((f) => /^Authentication-Results:/i.test(f)).map((f) => f.replace(/^[^:]*:\s*/, '').replace(/\s+/g, ' '));
    // header.b: the start of A's signature (RFC 6008), quoted when base64's "/" is in it (RFC 8601 2.2)
    const sig = fields.find((f) => /^DKIM-Signature:/i.test(f))!.replace(/\s+/g, '');
    const b8 = /;b=([^;]{8})/.exec(sig)![1];
    const headerB = b8.includes('/') ? `"${b8}"` : b8;
    assert.deepEqual(results, [
      'mx.b.test; spf=pass (mx.b.test: domain of alice@a.test designates 127.0.0.1 as permitted sender) smtp.mailfrom=alice@a.test smtp.helo=mx.a.test; '
      + `dkim=pass header.d=a.test header.s=sel1 header.a=rsa-sha256 header.b=${headerB}; `
      + 'dmarc=pass (p=REJECT arc=none) header.from=a.test header.d=a.test; arc=none',
    ]);
  });
});
