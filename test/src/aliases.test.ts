/**
 * Aliases (issue 4, item 6): virtual_alias_maps and alias_maps in texthash:
 * format, expanded by cleanup to local users and to a remote address (which
 * goes out by MX to a second instance, found through a DNS server on
 * loopback), nested aliases, postmaster@ and abuse@ for every local domain,
 * smtpd accepting alias addresses at RCPT, `postern map query`, and a loop
 * that is stopped with a clear log line and a bounce to the sender.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import nodemailer from 'nodemailer';
import { Instance, RawSmtp, waitFor } from './harness.js';
import { TestDnsServer } from './dns-server.js';
import { AliasMaps, MainConfig } from '../../packages/common/dist/index.js';

const VIRTUAL = `# virtual aliases
team@example.test      alice@example.test, bob@example.test, carol@remote.test
sales@example.test     team@example.test
keep@example.test      keep@example.test, bob@example.test
@catch.test            alice@example.test
loop-a@example.test    loop-b@example.test
loop-b@example.test    loop-a@example.test
mixed@example.test     bob@example.test, loop-a@example.test
`;
const ALIASES = `# local aliases: a bare name is that name in every mydestination domain
info    alice
`;

describe('alias expansion rules', () => {
  let dir: string;
  let maps: AliasMaps;
  before(() => {
    dir = fs.mkdtempSync('/tmp/postern-aliases-');
    fs.writeFileSync(path.join(dir, 'virtual'), VIRTUAL + 'deep-1@example.test deep-2@example.test\ndeep-2@example.test deep-3@example.test\n'
      + 'deep-3@example.test deep-4@example.test\nwide@example.test a@x.test, b@x.test, c@x.test, d@x.test\npipe@example.test |/bin/cat\n');
    fs.writeFileSync(path.join(dir, 'aliases'), ALIASES);
    const cfg = MainConfig.parse([
      'myhostname = mx.example.test', 'mydomain = example.test', 'mydestination = $myhostname, $mydomain',
      'virtual_mailbox_domains = catch.test', `virtual_alias_maps = texthash:${dir}/virtual`, `alias_maps = texthash:${dir}/aliases`,
      'virtual_alias_recursion_limit = 2', 'virtual_alias_expansion_limit = 3',
    ].join('\n'), path.join(dir, 'main.cf'));
    maps = new AliasMaps(cfg);
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('addresses, catch-alls, bare local names, postmaster and abuse', async () => {
    assert.deepEqual(await maps.expand('Sales@Example.test'), {
      addresses: ['alice@example.test', 'bob@example.test', 'carol@remote.test'], failures: [], expanded: true });
    assert.deepEqual((await maps.expand('keep@example.test')).addresses, ['keep@example.test', 'bob@example.test'], 'an alias to itself keeps a copy');
    assert.deepEqual((await maps.expand('anyone@catch.test')).addresses, ['alice@example.test']);
    assert.deepEqual((await maps.expand('info@mx.example.test')).addresses, ['alice@example.test'], 'a bare name gets @$myorigin');
    assert.equal((await maps.expand('info@catch.test')).addresses[0], 'alice@example.test', 'via the catch-all, not the bare name');
    assert.deepEqual(await maps.expand('alice@example.test'), { addresses: ['alice@example.test'], failures: [], expanded: false });
    assert.deepEqual((await maps.expand('abuse@catch.test')).addresses, ['alice@example.test'], 'the catch-all has the last word over abuse@');
    assert.deepEqual((await maps.expand('abuse@mx.example.test')).addresses, ['postmaster@example.test']);
    assert.deepEqual(await maps.expand('postmaster@example.test'), { addresses: ['postmaster@example.test'], failures: [], expanded: true });
    assert.ok(await maps.accepts('postmaster@example.test') && await maps.accepts('info@example.test') && (await maps.accepts('x@catch.test')));
    assert.ok(!await maps.accepts('nobody@example.test') && !(await maps.accepts('postmaster@remote.test')));
  });

  it('loops, nesting and expansion limits, undeliverable targets', async () => {
    assert.deepEqual(await maps.expand('loop-a@example.test'), { addresses: [], expanded: true, failures: [{ address: 'loop-a@example.test', dsn: '5.4.6',
      reason: 'mail forwarding loop for loop-a@example.test (loop-a@example.test -> loop-b@example.test -> loop-a@example.test)' }] });
    const mixed = await maps.expand('mixed@example.test');
    assert.deepEqual(mixed.addresses, ['bob@example.test'], 'the branch without a loop is delivered');
    assert.deepEqual(mixed.failures.map((f) => [f.address, f.dsn]), [['loop-a@example.test', '5.4.6']]);
    assert.deepEqual((await maps.expand('deep-1@example.test')).failures.map((f) => f.dsn), ['5.3.5'], 'nesting beyond virtual_alias_recursion_limit');
    assert.match((await maps.expand('wide@example.test')).failures[0].reason, /exceeds virtual_alias_expansion_limit \(3 addresses\)/);
    assert.match((await maps.expand('pipe@example.test')).failures[0].reason, /has no deliverable target \(\|\/bin\/cat\)/);
  });
});

describe('aliases on running instances', () => {
  let dns: TestDnsServer;
  let a: Instance;
  let b: Instance;
  let send: (to: string | string[], subject: string) => Promise<void>;

  before(async () => {
    dns = await new TestDnsServer({ records: [
      { name: 'remote.test', type: 'MX', value: { priority: 10, exchange: 'mx.remote.test' } },
      { name: 'mx.remote.test', type: 'A', value: '127.0.0.1' },
    ] }).start();
    // B, the remote destination, takes mail from loopback as from a trusted network
    b = await Instance.create({ domain: 'remote.test', users: [{ address: 'carol@remote.test' }], main: { dns_servers: dns.address } });
    await b.start();
    a = await Instance.create({
      users: [{ address: 'alice@example.test' }, { address: 'bob@example.test' }, { address: 'dave@example.test' }],
      main: {
        dns_servers: dns.address,
        smtp_port: String(b.ports.smtp),
        virtual_mailbox_domains: 'catch.test',
        virtual_alias_maps: 'texthash:$config_directory/virtual',
        alias_maps: 'texthash:$config_directory/aliases',
        postmaster_address: 'dave@example.test',
      },
    });
    fs.writeFileSync(path.join(a.etc, 'virtual'), VIRTUAL);
    fs.writeFileSync(path.join(a.etc, 'aliases'), ALIASES);
    await a.start();
    const t = nodemailer.createTransport({ host: '127.0.0.1', port: a.ports.smtp, secure: false, tls: { rejectUnauthorized: false } });
    send = async (to, subject) => {
      const info = await t.sendMail({ from: 'alice@example.test', to, subject, text: `${subject}\n` });
      assert.match(info.response, /^250 2\.0\.0 Ok: queued as/);
    };
  });
  after(async () => { await a?.destroy(); await b?.destroy(); await dns?.close(); });

  /** The delivered file whose Subject: is `subject`, once it arrives. */
  const arrived = (inst: Instance, address: string, subject: string) => waitFor(`${subject} for ${address}`,
    () => inst.delivered(address).find((f) => fs.readFileSync(f, 'utf8').split(/\r?\n/).includes(`Subject: ${subject}`)), 30000);

  it('postern map query prints a value, or exits 1 when the key is not there', () => {
    assert.equal(a.cli(['map', 'query', `texthash:${path.join(a.etc, 'virtual')}`, 'SALES@example.test']).stdout, 'team@example.test\n');
    assert.equal(a.cli(['map', 'query', 'alias_maps', 'info']).stdout, 'alice\n', 'a parameter naming tables');
    const miss = a.tryCli(['map', 'query', 'virtual_alias_maps', 'nobody@example.test']);
    assert.equal(miss.code, 1);
    assert.equal(miss.stderr, 'postern: nobody@example.test: not found in virtual_alias_maps\n');
    const bad = a.tryCli(['map', 'query', 'texthash:/nonexistent/table', 'x']);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /^postern: texthash:\/nonexistent\/table: cannot read: ENOENT/);
  });

  it('smtpd accepts aliases, catch-alls, postmaster@ and abuse@ at RCPT and still refuses unknown users', async () => {
    const c = await RawSmtp.connect(a.ports.smtp);
    try {
      assert.match(await c.command('EHLO client.example.test'), /^250/);
      assert.match(await c.command('MAIL FROM:<alice@example.test>'), /^250 /);
      for (const rcpt of ['team@example.test', 'info@example.test', 'whoever@catch.test', 'postmaster@example.test', 'abuse@mx.example.test']) {
        assert.match(await c.command(`RCPT TO:<${rcpt}>`), /^250 /, rcpt);
      }
      assert.equal(await c.command('RCPT TO:<nobody@example.test>'),
        '550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown in virtual mailbox table');
    } finally { c.close(); }
  });

  it('an alias delivers to each target: local users and a remote address by MX, nested aliases too', async () => {
    await send('sales@example.test', 'to the sales team');
    for (const who of ['alice@example.test', 'bob@example.test']) await arrived(a, who, 'to the sales team');
    const remote = fs.readFileSync(await arrived(b, 'carol@remote.test', 'to the sales team'), 'utf8');
    assert.match(remote, /^Received: from mx\.example\.test/m, 'carol\'s copy came from A');
    const expanded = await a.waitForLog('alias expansion logged', (e) => e.msg === 'alias expanded' && e.orig_to === '<sales@example.test>');
    assert.equal(expanded.to, '<alice@example.test>,<bob@example.test>,<carol@remote.test>');
    const sent = await a.waitForLog('remote delivery logged', (e) => e.status === 'sent' && e.to === '<carol@remote.test>');
    assert.match(sent.relay, /mx\.remote\.test\[127\.0\.0\.1\]/);
  });

  it('alias_maps bare names, catch-alls, postmaster@ and abuse@ reach their targets', async () => {
    await send('info@example.test', 'info by bare name');
    await arrived(a, 'alice@example.test', 'info by bare name');
    await send('anything@catch.test', 'caught');
    await arrived(a, 'alice@example.test', 'caught');
    await send(['postmaster@example.test', 'abuse@mx.example.test'], 'for the postmaster');
    await arrived(a, 'dave@example.test', 'for the postmaster');
    await waitFor('one copy for the postmaster', () => a.queueEmpty(), 15000);
    const copies = a.delivered('dave@example.test').filter((f) => fs.readFileSync(f, 'utf8').includes('Subject: for the postmaster'));
    assert.equal(copies.length, 1, 'two aliases leading to one address deliver one copy');
  });

  it('a loop of aliases is stopped with a clear log line and a bounce to the sender; other targets still get the mail', async () => {
    await send('loop-a@example.test', 'round and round');
    const warn = await a.waitForLog('loop logged', (e) => e.service === 'cleanup' && e.dsn === '5.4.6' && e.orig_to === '<loop-a@example.test>');
    assert.equal(warn.msg, 'mail forwarding loop for loop-a@example.test (loop-a@example.test -> loop-b@example.test -> loop-a@example.test)');
    assert.equal(warn.status, 'bounced');
    const bounce = fs.readFileSync(await waitFor('the bounce to alice', () => a.delivered('alice@example.test')
      .find((f) => /Subject: Undelivered Mail Returned to Sender/.test(fs.readFileSync(f, 'utf8'))
        && fs.readFileSync(f, 'utf8').includes('round and round')), 30000), 'utf8');
    assert.match(bounce, /Status: 5\.4\.6/);
    assert.match(bounce, /mail forwarding loop for loop-a@example\.test/);
    assert.match(bounce, /Final-Recipient: rfc822; ?loop-a@example\.test/);

    await send('mixed@example.test', 'partly looping');
    await arrived(a, 'bob@example.test', 'partly looping');
    const second = await waitFor('the bounce for the looping branch', () => a.delivered('alice@example.test')
      .map((f) => fs.readFileSync(f, 'utf8')).find((t) => /Undelivered Mail Returned to Sender/.test(t) && t.includes('partly looping')), 30000);
    assert.match(second, /Original-Recipient: rfc822; ?mixed@example\.test/);
    assert.match(second, /Status: 5\.4\.6/);
    assert.doesNotMatch(second, /Final-Recipient: rfc822; ?bob@example\.test/, 'bob\'s copy was delivered and is not reported');
  });
});
