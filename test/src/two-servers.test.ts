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

  it('lands in B\'s Maildir with a signature dkimpy and Mail::DKIM accept, and B\'s checks pass', async () => {
    const t = nodemailer.createTransport({ host: '127.0.0.1', port: a.ports.submission, secure: false, requireTLS: true,
      auth: { user: 'alice@a.test', pass: 'pw-alice' }, tls: { rejectUnauthorized: false } });
    await t.sendMail({ from: 'alice@a.test', to: 'bob@b.test', subject: 'across two servers', text: 'Hello Bob,\nthis went A -> B by MX.\n' });
    const file = await waitFor('delivery in B', () => b.delivered('bob@b.test')[0], 30000);
    const text = fs.readFileSync(file, 'utf8');
    assert.match(text, /^DKIM-Signature: .*d=a\.test/m);
    assert.match(text, /s=sel1/);
    assert.deepEqual(await dkimpyVerify(file, dns), [true]);
    assert.deepEqual(await mailDkimVerify(file, dns), ['sel1 pass']);
    // B saw A's verified reverse name and recorded the hop
    assert.match(text, /Received: from mx\.a\.test \(mx\.a\.test \[127\.0\.0\.1\]\)/);
    const sent = await a.waitForLog('A logs the delivery', (e) => e.status === 'sent' && e.to === '<bob@b.test>');
    assert.match(sent.relay, /mx\.b\.test\[127\.0\.0\.1\]/);
    await waitFor('A\'s queue empty', () => a.queueEmpty(), 10000);
  });

  it('B verifies SPF, DKIM and DMARC and says so in Authentication-Results', async () => {
    const file = b.delivered('bob@b.test')[0];
    const text = fs.readFileSync(file, 'utf8');
    const ar = /^Authentication-Results: mx\.b\.test;[^]*?(?=\n\S)/m.exec(text)?.[0] ?? '';
    assert.match(ar, /spf=pass/);
    assert.match(ar, /dkim=pass/);
    assert.match(ar, /dmarc=pass/);
  });
});

