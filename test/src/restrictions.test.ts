/**
 * smtpd's restriction lists and envelope checks: the client's reverse DNS and
 * its forward confirmation, DNS blocklists (RBL and RHSBL, with the list's
 * TXT reason), the sender's domain, the HELO name, relay control, clients
 * that talk out of turn, nmap's open-relay probe and SMTP smuggling.
 *
 * A real DNS server on loopback (TestDnsServer) serves the PTR, A, MX and TXT
 * records and the blocklist zones; clients connect to the MX listener
 * (127.0.0.1) from other loopback source addresses, each playing one kind of
 * server on the Internet (mynetworks is 10.255.0.0/16, so loopback is outside).
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { randomUUID } from 'node:crypto';
import nodemailer from 'nodemailer';
import { Instance, RawSmtp, requireTool, runAsync, waitFor } from './harness.js';
import { TestDnsServer } from './dns-server.js';
import { DnsResolver, MainConfig, ConfigError, NetworkList, parseRestrictionList, parseAddressPattern, ptrName } from '../../packages/common/dist/index.js';
import {
  checkRecipient, restrictionPolicy, lookupClientIdentity, SessionClient, validHostname, RecipientRequest,
} from '../../packages/smtpd/dist/restrictions.js';

const RCPT = 'rcpt@example.test';

/** The reply code and enhanced status code at the start of an SMTP reply. */
function codes(reply: string): string {
  return /^(\d{3}[ -]\d\.\d{1,3}\.\d{1,3})/.exec(reply)?.[1].replace('-', ' ') ?? reply;
}

/** The records of the Internet these tests live in. */
function zone(dns: TestDnsServer): void {
  const host = (name: string, ip: string) => {
    dns.add({ name: ip, type: 'PTR', value: name });
    dns.add({ name, type: 'A', value: ip });
  };
  host('relay-tester.test', '127.0.0.1'); // nmap's source address: a proper name, so only relay control is tested
  // 127.0.0.2: no PTR at all
  dns.add({ name: '127.0.0.3', type: 'PTR', value: 'mismatch.test' }); // ...whose A record is elsewhere
  dns.add({ name: 'mismatch.test', type: 'A', value: '192.0.2.1' });
  host('listed.test', '127.0.0.4');
  dns.add({ name: '4.0.0.127.bl.test', type: 'A', value: '127.0.0.2' });
  dns.add({ name: '4.0.0.127.bl.test', type: 'TXT', value: 'Listed for testing, see https://bl.test/q?ip=127.0.0.4' });
  host('clean.test', '127.0.0.5');
  dns.timeoutFor(ptrName('127.0.0.6'));
  dns.servfailFor(ptrName('127.0.0.7'));
  host('rhs-listed.test', '127.0.0.8');
  dns.add({ name: 'rhs-listed.test.dbl.test', type: 'A', value: '127.0.0.2' });
  // sender domains
  dns.add({ name: 'sender.test', type: 'MX', value: '10 mx.sender.test' });
  dns.add({ name: 'mx.sender.test', type: 'A', value: '192.0.2.10' });
  dns.add({ name: 'spam.test', type: 'MX', value: '10 mx.sender.test' });
  dns.add({ name: 'spam.test.dbl.test', type: 'A', value: '127.0.0.2' });
  dns.add({ name: 'spam.test.dbl.test', type: 'TXT', value: 'spam.test sends spam' });
  dns.add({ name: 'a-only.test', type: 'A', value: '192.0.2.20' });
  dns.add({ name: 'null-mx.test', type: 'MX', value: '0 .' });
  dns.add({ name: 'slow.test', type: 'A', value: '192.0.2.30' });
  dns.timeoutFor('slow.test');
}

// ---------------------------------------------------------------------------

describe('restriction list syntax', () => {
  const parse = (text: string) => MainConfig.parse(`myhostname = mx.test\n${text}\n`, '/etc/postern/main.cf');

  it('names, a zone after the DNS list restrictions, an optional =pattern filter', () => {
    const cfg = parse('smtpd_client_restrictions = permit_mynetworks,\n  reject_rbl_client bl.test=127.0.0.[2..11], reject_rhsbl_sender DBL.test. permit');
    assert.deepEqual(parseRestrictionList(cfg, 'smtpd_client_restrictions'), [
      { name: 'permit_mynetworks' },
      { name: 'reject_rbl_client', zone: 'bl.test', filter: '127.0.0.[2..11]' },
      { name: 'reject_rhsbl_sender', zone: 'dbl.test', filter: undefined },
      { name: 'permit' },
    ]);
  });

  it('an unknown restriction, a missing zone, a bad filter, a bad reply code: main.cf and the line', () => {
    const problem = (text: string, name: any, re: RegExp) => assert.throws(() => parseRestrictionList(parse(text), name),
      (e: unknown) => e instanceof ConfigError && re.test(e.message), text);
    problem('smtpd_helo_restrictions = reject_everyone', 'smtpd_helo_restrictions',
      /^main\.cf:2: unknown restriction "reject_everyone" in smtpd_helo_restrictions$/);
    problem('smtpd_client_restrictions = reject_rbl_client', 'smtpd_client_restrictions', /^main\.cf:2: reject_rbl_client needs a DNS list zone/);
    problem('smtpd_client_restrictions = reject_rbl_client permit', 'smtpd_client_restrictions', /needs a DNS list zone/);
    problem('smtpd_client_restrictions = reject_rbl_client bl.test=127.0.0', 'smtpd_client_restrictions', /"127\.0\.0" is not an address pattern/);
    assert.throws(() => restrictionPolicy(parse('unknown_client_reject_code = 250'), new NetworkList([]), new Set()),
      (e: unknown) => e instanceof ConfigError && e.message === 'main.cf:2: unknown_client_reject_code: 250 is not a 4xx or 5xx reply code');
  });

  it('address patterns as Postfix writes them', () => {
    const m = parseAddressPattern('127.0.[0;1].[2..4;10]')!;
    assert.ok(m('127.0.0.2') && m('127.0.1.4') && m('127.0.0.10'));
    assert.ok(!m('127.0.0.5') && !m('127.0.2.2') && !m('127.1.0.2'));
    for (const bad of ['127.0.0', '127.0.0.256', '127.0.0.[4..2]', '127.0.0.x']) assert.equal(parseAddressPattern(bad), null, bad);
  });

  it('host names as Postfix judges them', () => {
    for (const ok of ['mail.example.com', 'a', 'under_score.test', 'x-1.test.']) assert.ok(validHostname(ok), ok);
    for (const bad of ['bad..name', '-dash.test', 'dash-.test', 'sp ace', 'bang!', '1.2.3.4', '12', 'x'.repeat(64) + '.test']) {
      assert.ok(!validHostname(bad), bad);
    }
  });
});

describe('restriction evaluation against a DNS server on loopback', () => {
  let dns: TestDnsServer;
  let resolver: DnsResolver;
  before(async () => {
    dns = await new TestDnsServer().start();
    zone(dns);
    // IPv6 clients cannot connect from anywhere but ::1 on loopback, so the nibble form is checked here
    dns.add({ name: '2001:db8::25', type: 'PTR', value: 'v6.test' });
    dns.add({ name: 'v6.test', type: 'AAAA', value: '2001:db8::25' });
    dns.add({ name: '5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test', type: 'A', value: '127.0.0.3' });
    dns.add({ name: '5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test', type: 'TXT', value: 'v6 listing' });
    dns.add({ name: '127.0.0.9', type: 'PTR', value: 'bad name!' });
    dns.add({ name: '127.0.0.10', type: 'PTR', value: 'first.test' });
    dns.add({ name: '127.0.0.10', type: 'PTR', value: 'second.test' });
    dns.add({ name: 'first.test', type: 'A', value: '192.0.2.99' });
    dns.add({ name: 'second.test', type: 'A', value: '127.0.0.10' });
    dns.add({ name: '2.0.0.127.err.test', type: 'A', value: '127.255.255.254' });
    resolver = new DnsResolver({ servers: [{ host: dns.host, port: dns.port }], timeoutMs: 500 });
  });
  after(async () => { await dns?.close(); });

  function policy(lists: string) {
    const cfg = MainConfig.parse(`myhostname = mx.test\n${lists}\n`, '/etc/postern/main.cf');
    return restrictionPolicy(cfg, new NetworkList(['10.0.0.0/8']), new Set(['example.test']));
  }
  const env = { knownRecipient: (a: string) => a === RCPT, warn: () => undefined };
  function request(ip: string, extra: Partial<RecipientRequest> = {}): RecipientRequest {
    return { client: new SessionClient(ip, resolver), helo: 'client.test', sender: 'a@sender.test', recipient: RCPT, authenticated: false, ...extra };
  }
  const check = (p: ReturnType<typeof policy>, r: RecipientRequest) => checkRecipient(p, { ...env, resolver }, r);

  it('forward-confirmed reverse DNS: confirmed, unconfirmed, none, malformed, temporary, a second PTR that confirms', async () => {
    const id = (ip: string) => lookupClientIdentity(resolver, ip);
    assert.deepEqual(await id('127.0.0.5'), { address: '127.0.0.5', name: 'clean.test', reverseName: 'clean.test', reverse: 'found', forward: 'confirmed' });
    assert.deepEqual(await id('127.0.0.3'), { address: '127.0.0.3', name: 'unknown', reverseName: 'mismatch.test', reverse: 'found', forward: 'unconfirmed' });
    assert.deepEqual(await id('127.0.0.2'), { address: '127.0.0.2', name: 'unknown', reverseName: 'unknown', reverse: 'none', forward: 'unconfirmed' });
    assert.equal((await id('127.0.0.9')).reverse, 'none', 'a PTR that is no host name counts as none');
    assert.equal((await id('127.0.0.6')).reverse, 'temporary');
    assert.equal((await id('127.0.0.7')).reverse, 'temporary');
    assert.equal((await id('127.0.0.10')).name, 'second.test');
    assert.equal((await id('2001:db8::25')).name, 'v6.test');
  });

  it('a session looks the client up once', async () => {
    const c = new SessionClient('127.0.0.5', resolver);
    assert.equal(c.label, 'unknown[127.0.0.5]', 'unknown until looked up');
    const a = c.lookup();
    assert.equal(c.lookup(), a);
    await a;
    assert.equal(c.label, 'clean.test[127.0.0.5]');
  });

  it('reverse DNS restrictions: 550 and 450 with 5.7.25/4.7.25, DNS failures 450, the codes configurable', async () => {
    const p = policy('smtpd_client_restrictions = reject_unknown_reverse_client_hostname, reject_unknown_client_hostname');
    assert.deepEqual(await check(p, request('127.0.0.2')), { code: 550, enhanced: '5.7.25', text: 'Client host rejected: cannot find your reverse hostname, [127.0.0.2]' });
    assert.deepEqual(await check(p, request('127.0.0.3')), { code: 450, enhanced: '4.7.25', text: 'Client host rejected: cannot find your hostname, [127.0.0.3]' });
    assert.equal((await check(p, request('127.0.0.6')))?.code, 450);
    assert.equal((await check(p, request('127.0.0.7')))?.code, 450);
    assert.equal(await check(p, request('127.0.0.5')), null);
    const strict = policy('smtpd_client_restrictions = reject_unknown_client_hostname\nunknown_client_reject_code = 550\nunknown_reverse_client_reject_code = 450');
    assert.equal(codesOf(await check(strict, request('127.0.0.3'))), '550 5.7.25');
    assert.equal(codesOf(await check(strict, request('127.0.0.7'))), '450 4.7.25', 'a DNS failure stays 450');
    const lenient = policy('smtpd_client_restrictions = reject_unknown_reverse_client_hostname\nunknown_reverse_client_reject_code = 450');
    assert.equal(codesOf(await check(lenient, request('127.0.0.2'))), '450 4.7.25');
  });

  it('DNSBL: IPv4 and IPv6 nibble form, the TXT reason, =filters, the list\'s error answers, a list that does not answer', async () => {
    const p = policy('smtpd_client_restrictions = reject_rbl_client bl.test');
    assert.deepEqual(await check(p, request('127.0.0.4')),
      { code: 554, enhanced: '5.7.1', text: 'Service unavailable; client [127.0.0.4] blocked using bl.test; Listed for testing, see https://bl.test/q?ip=127.0.0.4' });
    assert.deepEqual(await check(p, request('2001:db8::25')),
      { code: 554, enhanced: '5.7.1', text: 'Service unavailable; client [2001:db8::25] blocked using bl.test; v6 listing' });
    assert.equal(await check(p, request('127.0.0.5')), null);
    assert.equal(await check(policy('smtpd_client_restrictions = reject_rbl_client bl.test=127.0.0.3'), request('127.0.0.4')), null, 'answer 127.0.0.2 is filtered out');
    assert.equal((await check(policy('smtpd_client_restrictions = reject_rbl_client bl.test=127.0.0.[2..3]'), request('127.0.0.4')))?.code, 554);
    assert.equal(await check(policy('smtpd_client_restrictions = reject_rbl_client err.test'), request('127.0.0.2')), null, '127.255.255.x is an error, not a listing');
    dns.timeoutFor('4.0.0.127.slowbl.test');
    const warnings: string[] = [];
    const r = await checkRecipient(policy('smtpd_client_restrictions = reject_rbl_client slowbl.test'), { ...env, resolver, warn: (_f, m) => warnings.push(m) }, request('127.0.0.4'));
    assert.equal(r, null, 'a list that does not answer lists nobody');
    assert.match(warnings.join('\n'), /reject_rbl_client slowbl\.test: lookup of 4\.0\.0\.127\.slowbl\.test failed/);
  });

  it('lists in order, permit ends only its own list, mynetworks and authenticated clients skip the DNS checks', async () => {
    const p = policy('smtpd_client_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unknown_reverse_client_hostname\n' +
      'smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination');
    assert.equal(await check(p, request('10.1.2.3', { recipient: 'x@elsewhere.test' })), null, 'mynetworks relays');
    assert.equal(await check(p, request('127.0.0.2', { authenticated: true, recipient: 'x@elsewhere.test' })), null, 'authenticated relays');
    assert.equal(codesOf(await check(p, request('127.0.0.5', { recipient: 'x@elsewhere.test' }))), '554 5.7.1');
    assert.equal(codesOf(await check(p, request('10.1.2.3', { recipient: 'nobody@example.test' }))), '550 5.1.1', 'unlisted recipients even from mynetworks');
    const deny = policy('smtpd_client_restrictions = permit_mynetworks, reject\nsmtpd_sender_restrictions = reject');
    assert.deepEqual(await check(deny, request('127.0.0.5')), { code: 554, enhanced: '5.7.1', text: '<unknown[127.0.0.5]>: Client host rejected: Access denied' });
    assert.deepEqual(await check(deny, request('10.1.2.3')), { code: 554, enhanced: '5.7.1', text: '<a@sender.test>: Sender address rejected: Access denied' },
      'permit_mynetworks ended the client list only');
  });

  it('sender and HELO checks', async () => {
    const p = policy('smtpd_sender_restrictions = reject_rhsbl_sender dbl.test, reject_unknown_sender_domain\n' +
      'smtpd_helo_restrictions = reject_invalid_helo_hostname, reject_non_fqdn_helo_hostname');
    assert.equal(await check(p, request('127.0.0.5')), null);
    assert.equal(await check(p, request('127.0.0.5', { sender: '' })), null, 'the null sender has no domain to check');
    assert.equal(await check(p, request('127.0.0.5', { sender: 'a@a-only.test' })), null, 'an A record will do');
    assert.deepEqual(await check(p, request('127.0.0.5', { sender: 'a@nowhere.test' })),
      { code: 450, enhanced: '4.1.8', text: '<a@nowhere.test>: Sender address rejected: Domain not found' });
    assert.deepEqual(await check(p, request('127.0.0.5', { sender: 'a@slow.test' })),
      { code: 450, enhanced: '4.1.8', text: '<a@slow.test>: Sender address rejected: Domain lookup failed, try again later' });
    assert.equal(codesOf(await check(p, request('127.0.0.5', { sender: 'a@null-mx.test' }))), '550 5.7.27');
    assert.deepEqual(await check(p, request('127.0.0.5', { sender: 'boss@spam.test' })),
      { code: 554, enhanced: '5.7.1', text: 'Service unavailable; sender address [boss@spam.test] blocked using dbl.test; spam.test sends spam' });
    assert.deepEqual(await check(p, request('127.0.0.5', { helo: 'bad..name' })),
      { code: 501, enhanced: '5.5.2', text: '<bad..name>: Helo command rejected: Invalid name' });
    assert.deepEqual(await check(p, request('127.0.0.5', { helo: 'localhost' })),
      { code: 504, enhanced: '5.5.2', text: '<localhost>: Helo command rejected: need fully-qualified hostname' });
    assert.equal(await check(p, request('127.0.0.5', { helo: '[127.0.0.5]' })), null, 'an address literal is a valid HELO');
    assert.equal(await check(p, request('127.0.0.5', { helo: '[IPv6:2001:db8::1]' })), null);
  });
});

function codesOf(r: { code: number; enhanced: string } | null): string {
  return r ? `${r.code} ${r.enhanced}` : 'accepted';
}

// ---------------------------------------------------------------------------

/** Everything the server says to a raw socket until it closes (bounded), after sending `first` at once. */
async function rawConversation(port: number, localAddress: string, steps: { waitGreeting: boolean; send: string[] }): Promise<{ text: string; closed: boolean }> {
  const sock = net.createConnection({ port, host: '127.0.0.1', localAddress });
  let text = '';
  let closed = false;
  sock.on('data', (d) => { text += d.toString('latin1'); });
  sock.on('close', () => { closed = true; });
  sock.on('error', () => undefined);
  await new Promise<void>((res, rej) => { sock.once('connect', res); sock.once('error', rej); });
  try {
    if (steps.waitGreeting) await waitFor('the greeting', () => /^220 /m.test(text), 10000, 20);
    for (const s of steps.send) {
      const seen = text.length;
      sock.write(s);
      await waitFor('a reply', () => text.length > seen || closed, 10000, 20).catch(() => undefined);
    }
    await waitFor('the server to close the connection', () => closed, 10000, 50);
    return { text, closed };
  } finally { sock.destroy(); }
}

describe('client, HELO and sender checks on the MX listener', () => {
  let dns: TestDnsServer;
  let inst: Instance;
  before(async () => {
    dns = await new TestDnsServer().start();
    zone(dns);
    inst = await Instance.create({
      users: [{ address: RCPT }],
      main: {
        mynetworks: '10.255.0.0/16',
        dns_servers: dns.address,
        dns_timeout: '1s',
        smtpd_client_restrictions: 'permit_mynetworks, permit_sasl_authenticated, reject_unknown_reverse_client_hostname, ' +
          'reject_unknown_client_hostname, reject_rbl_client bl.test, reject_rhsbl_client dbl.test',
        smtpd_sender_restrictions: 'reject_rhsbl_sender dbl.test, reject_unknown_sender_domain',
      },
    });
    await inst.start();
  });
  after(async () => {
    await inst?.destroy();
    await dns?.close();
  });

  /** EHLO, MAIL, RCPT from a loopback address; the RCPT reply (and DATA's, which must fail without a recipient). */
  async function attempt(localAddress: string, o: { helo?: string; from?: string; to?: string } = {}): Promise<string> {
    const c = await RawSmtp.connect(inst.ports.smtp, { localAddress });
    try {
      assert.match(await c.command(`EHLO ${o.helo ?? 'client.test'}`), /^250[ -]/);
      assert.match(await c.command(`MAIL FROM:<${o.from ?? 'someone@sender.test'}>`), /^250 /);
      const reply = await c.command(`RCPT TO:<${o.to ?? RCPT}>`);
      if (!/^250 /.test(reply)) assert.match(await c.command('DATA'), /^5\d\d /, 'no DATA without an accepted recipient');
      return reply;
    } finally { c.close(); }
  }

  async function sendFrom(localAddress: string, subject: string): Promise<string> {
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: inst.ports.smtp, secure: false, ignoreTLS: true, name: 'mail.clean.test', localAddress });
    try {
      const info = await transport.sendMail({
        envelope: { from: 'someone@sender.test', to: [RCPT] },
        raw: `From: someone@sender.test\r\nTo: ${RCPT}\r\nSubject: ${subject}\r\nMessage-ID: <${randomUUID()}@sender.test>\r\n\r\nhello\r\n`,
      });
      assert.deepEqual(info.accepted, [RCPT]);
      return /queued as ([0-9A-F]+)/.exec(info.response)![1];
    } finally { transport.close(); }
  }

  const deliveredWith = (subject: string) => inst.delivered(RCPT).filter((f) => fs.readFileSync(f, 'latin1').includes(`Subject: ${subject}\n`));

  it('four clients, four answers; only the clean one\'s mail is delivered', async () => {
    const before = inst.delivered(RCPT).length;
    const noPtr = await attempt('127.0.0.2');
    assert.equal(noPtr, '550 5.7.25 Client host rejected: cannot find your reverse hostname, [127.0.0.2]');
    const unconfirmed = await attempt('127.0.0.3');
    assert.equal(unconfirmed, '450 4.7.25 Client host rejected: cannot find your hostname, [127.0.0.3]');
    const listed = await attempt('127.0.0.4');
    assert.equal(listed, '554 5.7.1 Service unavailable; client [127.0.0.4] blocked using bl.test; Listed for testing, see https://bl.test/q?ip=127.0.0.4');

    const subject = `clean ${randomUUID()}`;
    const id = await sendFrom('127.0.0.5', subject);
    const [file] = await waitFor('the clean client\'s message in the mailbox', () => deliveredWith(subject).length ? deliveredWith(subject) : null);
    const text = fs.readFileSync(file, 'latin1');
    assert.match(text, /^Received: from mail\.clean\.test \(clean\.test \[127\.0\.0\.5\]\)/m, 'the verified name in Received:');
    await waitFor('an empty queue', () => inst.queueEmpty());
    assert.equal(inst.delivered(RCPT).length, before + 1, 'only the clean client\'s message was delivered');

    const logs = inst.logs();
    assert.ok(logs.some((e) => e.msg === 'connect from clean.test[127.0.0.5]'), 'connect is logged with the verified name');
    assert.ok(logs.some((e) => e.queue_id === id && e.client === 'clean.test[127.0.0.5]'));
    const rejected = logs.find((e) => e.status === 'reject' && e.client === 'unknown[127.0.0.2]');
    assert.equal(rejected?.dsn, '5.7.25');
    assert.equal(rejected?.from, 'someone@sender.test', 'the reject line has the envelope (checks run at RCPT)');
    assert.equal(rejected?.to, RCPT);
    assert.equal(rejected?.helo, 'client.test');
  });

  it('a DNS timeout or failure for the client\'s PTR is 450, never 550', async () => {
    assert.equal(codes(await attempt('127.0.0.6')), '450 4.7.25');
    assert.equal(codes(await attempt('127.0.0.7')), '450 4.7.25');
  });

  it('RHSBL: the client\'s verified name and the sender\'s domain', async () => {
    assert.equal(await attempt('127.0.0.8'), '554 5.7.1 Service unavailable; client host [rhs-listed.test] blocked using dbl.test');
    assert.equal(await attempt('127.0.0.5', { from: 'boss@spam.test' }),
      '554 5.7.1 Service unavailable; sender address [boss@spam.test] blocked using dbl.test; spam.test sends spam');
  });

  it('a sender domain without MX or A: 450 4.1.8', async () => {
    assert.equal(await attempt('127.0.0.5', { from: 'nobody@nowhere.test' }), '450 4.1.8 <nobody@nowhere.test>: Sender address rejected: Domain not found');
    assert.match(await attempt('127.0.0.5', { from: 'someone@a-only.test' }), /^250 /);
  });

  it('an invalid HELO name: 501 5.5.2 (the default smtpd_helo_restrictions)', async () => {
    assert.equal(await attempt('127.0.0.5', { helo: 'bad..name' }), '501 5.5.2 <bad..name>: Helo command rejected: Invalid name');
    assert.match(await attempt('127.0.0.5', { helo: '[127.0.0.5]' }), /^250 /);
  });

  it('relay control and unknown users keep their replies', async () => {
    assert.equal(await attempt('127.0.0.5', { to: 'someone@elsewhere.test' }), '554 5.7.1 <someone@elsewhere.test>: Relay access denied');
    assert.equal(await attempt('127.0.0.5', { to: 'nobody@example.test' }),
      '550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown in virtual mailbox table');
  });

  it('talking before the greeting, or pipelining without PIPELINING: 554 5.5.0 and the connection is dropped', async () => {
    const early = await rawConversation(inst.ports.smtp, '127.0.0.5', { waitGreeting: false, send: ['EHLO early.test\r\n'] });
    assert.equal(early.text, '554 5.5.0 Error: SMTP protocol synchronization\r\n', 'no greeting, no EHLO reply');
    const together = await rawConversation(inst.ports.smtp, '127.0.0.5', { waitGreeting: true, send: ['EHLO fast.test\r\nMAIL FROM:<a@sender.test>\r\n'] });
    assert.match(together.text, /^220 [^\n]*\r\n554 5\.5\.0 Error: SMTP protocol synchronization\r\n$/, together.text);
    const helo = await rawConversation(inst.ports.smtp, '127.0.0.5', { waitGreeting: true, send: ['HELO old.test\r\n', 'MAIL FROM:<a@sender.test>\r\nRCPT TO:<rcpt@example.test>\r\n'] });
    assert.match(helo.text, /^220 [^\n]*\r\n250 [^\n]*\r\n554 5\.5\.0 Error: SMTP protocol synchronization\r\n$/, helo.text);
    const log = await inst.waitForLog('the violation logged', (e) => /^improper command pipelining before the greeting from unknown\[127\.0\.0\.5\]/.test(e.msg ?? ''));
    assert.equal(log.input, 'EHLO early.test\r\n');
    await inst.waitForLog('the violation after EHLO logged', (e) => /^improper command pipelining after EHLO from /.test(e.msg ?? '') && e.input === 'MAIL FROM:<a@sender.test>\r\n');

    // after an EHLO reply that offers PIPELINING, a group of commands is fine
    const c = await RawSmtp.connect(inst.ports.smtp, { localAddress: '127.0.0.5' });
    try {
      assert.match(await c.command('EHLO piper.test'), /PIPELINING/);
      await c.send(`MAIL FROM:<someone@sender.test>\r\nRCPT TO:<${RCPT}>\r\nDATA\r\n`);
      assert.match(await c.reply(), /^250 /);
      assert.match(await c.reply(), /^250 /);
      assert.match(await c.reply(), /^354 /);
      await c.send('Subject: pipelined\r\n\r\nok\r\n.\r\n');
      assert.match(await c.reply(), /^250 2\.0\.0 Ok: queued as /);
      assert.match(await c.command('QUIT'), /^221 /);
    } finally { c.close(); }
  });

  it('nmap smtp-open-relay finds no relay (a client outside mynetworks, on the MX listener)', async () => {
    const nmap = requireTool('nmap');
    for (const domain of ['relay-target.test', 'example.test']) {
      // asynchronously: the test DNS server in this process must keep answering smtpd's lookups meanwhile.
      // `+` runs the script although the port is not 25/465/587.
      const r = await runAsync(nmap, ['-Pn', '-sT', '-n', '-p', String(inst.ports.smtp), '--script', '+smtp-open-relay',
        '--script-args', `smtp-open-relay.domain=${domain},smtp-open-relay.ip=127.0.0.1`, '127.0.0.1'], '', 120000);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /smtp-open-relay: Server doesn't seem to be an open relay, all tests failed/, r.stdout);
      // what refused them was relay control, not a client check: nmap's client has a proper name
      await inst.waitForLog(`relay control refusing nmap's attempts at ${domain}`, (e) => e.status === 'reject' &&
        e.client === 'relay-tester.test[127.0.0.1]' && e.helo === domain && /: 554 5\.7\.1 <[^>]*>: Relay access denied$/.test(e.msg));
    }
    assert.ok(!inst.logs().some((e) => e.client === 'relay-tester.test[127.0.0.1]' && e.msg === 'queued'), 'nothing nmap sent was queued');
  });

  it('SMTP smuggling: no DATA terminator made of bare CR/LF (or NUL) lets a second message through', async () => {
    const variants = ['\n.\n', '\n.\r\n', '\r\n.\n', '\r.\r', '\r\n.\r', '\r.\r\n', '\r.\n', '\n.\r',
      '\r\n\x00.\r\n', '\r\n.\x00\r\n', '\n\x00.\n', '\r\n\x00.\n'];
    const before = inst.delivered(RCPT).length;
    let accepted = 0;
    for (const v of variants) {
      const c = await RawSmtp.connect(inst.ports.smtp, { localAddress: '127.0.0.5' });
      try {
        assert.match(await c.command('EHLO smuggler.test'), /^250[ -]/);
        assert.match(await c.command('MAIL FROM:<someone@sender.test>'), /^250 /);
        assert.match(await c.command(`RCPT TO:<${RCPT}>`), /^250 /);
        assert.match(await c.command('DATA'), /^354 /);
        await c.send(`Subject: first ${JSON.stringify(v)}\r\n\r\nfirst${v}MAIL FROM:<evil@spam.test>\r\nRCPT TO:<${RCPT}>\r\nDATA\r\n` +
          `Subject: smuggled\r\n\r\nsmuggled\r\n.\r\n`);
        const reply = await c.reply();
        if (/[\r\n]/.test(v.replace(/\r\n/g, ''))) assert.equal(codes(reply), '550 5.5.2', `${JSON.stringify(v)}: ${reply}`);
        else assert.match(reply, /^250 /, JSON.stringify(v));
        if (/^250 /.test(reply)) accepted++;
        assert.match(await c.command('QUIT'), /^221 /, `${JSON.stringify(v)}: the smuggled commands were not run`);
      } finally { c.close(); }
    }
    await waitFor('the accepted messages delivered', () => inst.delivered(RCPT).length >= before + accepted && inst.queueEmpty());
    assert.equal(inst.delivered(RCPT).length, before + accepted, 'one message per accepted DATA, no second one');
    const smuggled = inst.delivered(RCPT).filter((f) => /^Subject: smuggled$/m.test(fs.readFileSync(f, 'latin1').split('\n\n')[0]));
    assert.deepEqual(smuggled, [], 'no delivered message has the smuggled headers');
  });
});

describe('a bad restriction list stops start with file:line', () => {
  let inst: Instance;
  before(async () => { inst = await Instance.create(); });
  after(async () => { await inst?.destroy(); });

  it('main.cf: unknown restriction', () => {
    inst.cli(['config', 'set', 'smtpd_helo_restrictions=reject_bogus_helo']);
    const line = fs.readFileSync(`${inst.etc}/main.cf`, 'utf8').split('\n').findIndex((l) => l.startsWith('smtpd_helo_restrictions')) + 1;
    const r = inst.tryCli(['start']);
    assert.equal(r.code, 1, r.stdout);
    assert.match(r.stderr, new RegExp(`main\\.cf:${line}: unknown restriction "reject_bogus_helo" in smtpd_helo_restrictions`));
    inst.cli(['config', 'set', 'smtpd_helo_restrictions=reject_invalid_helo_hostname']);
  });

  it('master.cf: an -o override names master.cf and its line', () => {
    const file = `${inst.etc}/master.cf`;
    const lines = fs.readFileSync(file, 'utf8').split('\n');
    const at = lines.findIndex((l) => /^\S+\s+inet\s.*smtpd\s*$/.test(l));
    assert.ok(at >= 0, 'the MX listener line');
    lines[at] += ' -o smtpd_client_restrictions=reject_rbl_client';
    fs.writeFileSync(file, lines.join('\n'));
    const r = inst.tryCli(['start']);
    assert.equal(r.code, 1, r.stdout);
    assert.match(r.stderr, new RegExp(`master\\.cf:${at + 1}: reject_rbl_client needs a DNS list zone after it in smtpd_client_restrictions`));
  });
});
