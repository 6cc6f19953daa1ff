// Tests for packages/common dns-wire.ts and dns.ts against the loopback TestDnsServer.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as dgram from 'node:dgram';
import * as dns from 'node:dns';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { generateKeyPairSync } from 'node:crypto';
import { spf } from 'mailauth/lib/spf';
import { dkimSign } from 'mailauth/lib/dkim/sign';
import { dkimVerify } from 'mailauth/lib/dkim/verify';
import {
  DnsMessage, DnsResolver, DnsError, MainConfig, ConfigError, encodeDnsMessage, decodeDnsMessage, encodeDnsQuery, DnsWireError,
  formatIPv6, ipToBytes, parseDnsServer, systemDnsServers, ptrName, reverseAddressLabels, resolveMailHosts, sharedResolver,
} from '../../packages/common/dist/index.js';
import { TestDnsServer } from './dns-server.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function resolverFor(...servers: TestDnsServer[]): DnsResolver {
  return new DnsResolver({ servers: servers.map((s) => ({ host: s.host, port: s.port })), timeoutMs: 400 });
}

async function rejectsWith(p: Promise<unknown>, code: string, temporary: boolean): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof DnsError, `expected a DnsError, got ${e}`);
    assert.equal(e.code, code);
    assert.equal(e.temporary, temporary);
    return true;
  });
}

describe('dns-wire', () => {
  test('a message with every supported type survives encode and decode', () => {
    const m: DnsMessage = {
      id: 4242, qr: true, opcode: 0, aa: true, tc: false, rd: true, ra: true, rcode: 3,
      questions: [{ name: 'example.test', type: 15, class: 1 }],
      answers: [
        { name: 'example.test', type: 'MX', class: 1, ttl: 300, data: { priority: 10, exchange: 'mx.example.test' } },
        { name: 'mx.example.test', type: 'A', class: 1, ttl: 60, data: '192.0.2.7' },
        { name: 'mx.example.test', type: 'AAAA', class: 1, ttl: 60, data: '2001:db8::1:0:0:1' },
        { name: 'example.test', type: 'TXT', class: 1, ttl: 5, data: ['v=spf1 ', '-all', ''] },
        { name: '7.2.0.192.in-addr.arpa', type: 'PTR', class: 1, ttl: 5, data: 'mx.example.test' },
        { name: 'www.example.test', type: 'CNAME', class: 1, ttl: 5, data: 'example.test' },
        { name: 'example.test', type: 'NS', class: 1, ttl: 5, data: 'ns1.example.test' },
        { name: 'nomail.test', type: 'MX', class: 1, ttl: 5, data: { priority: 0, exchange: '' } },
      ],
      authorities: [{ name: 'example.test', type: 'SOA', class: 1, ttl: 900,
        data: { nsname: 'ns1.example.test', hostmaster: 'hostmaster.example.test', serial: 2026010101, refresh: 3600, retry: 600, expire: 604800, minttl: 300 } }],
      additionals: [{ name: '', type: 'OPT', class: 1232, ttl: 0, data: Buffer.alloc(0) }],
    };
    const wire = encodeDnsMessage(m);
    assert.deepEqual(decodeDnsMessage(wire), m);
    // "example.test" appears many times: compression must have shortened it to pointers.
    assert.ok(wire.includes(Buffer.from([0xc0, 12])), 'no compression pointer to the question name');
    assert.ok(wire.length < 300, `message of ${wire.length} bytes: compression not working`);
  });

  test('a query carries one question, RD and an EDNS0 OPT record', () => {
    const q = decodeDnsMessage(encodeDnsQuery(7, 'Example.TEST.', 'TXT', 1232));
    assert.equal(q.id, 7);
    assert.equal(q.rd, true);
    assert.deepEqual(q.questions, [{ name: 'Example.TEST', type: 16, class: 1 }]);
    assert.equal(q.additionals[0].type, 'OPT');
    assert.equal(q.additionals[0].class, 1232);
  });

  test('malformed packets throw DnsWireError instead of reading out of bounds', () => {
    const good = encodeDnsQuery(1, 'a.example.test', 'A');
    assert.throws(() => decodeDnsMessage(good.subarray(0, 8)), DnsWireError);
    assert.throws(() => decodeDnsMessage(good.subarray(0, good.length - 3)), DnsWireError);
    const loop = Buffer.from(good);
    loop.writeUInt16BE(0xc000 | 12, 12); // the question name points at itself
    assert.throws(() => decodeDnsMessage(loop), /does not point backwards/);
    const badLabel = Buffer.from(good);
    badLabel[12] = 0x80;
    assert.throws(() => decodeDnsMessage(badLabel), /unknown label type/);
    assert.throws(() => encodeDnsQuery(1, 'x'.repeat(64) + '.test', 'A'), /longer than 63/);
  });

  test('a TTL with the top bit set is read as zero (RFC 2181)', () => {
    const wire = encodeDnsMessage({
      id: 1, qr: true, opcode: 0, aa: false, tc: false, rd: false, ra: false, rcode: 0, questions: [],
      answers: [{ name: 'a.test', type: 'A', class: 1, ttl: 0x80000001, data: '192.0.2.1' }], authorities: [], additionals: [],
    });
    assert.equal(decodeDnsMessage(wire).answers[0].ttl, 0);
  });

  test('IPv6 addresses: parsing and RFC 5952 text; reverse names', () => {
    assert.equal(formatIPv6(ipToBytes('2001:0db8:0000:0000:0000:0000:0000:0001')), '2001:db8::1');
    assert.equal(formatIPv6(ipToBytes('::')), '::');
    assert.equal(formatIPv6(ipToBytes('::ffff:192.0.2.1')), '::ffff:c000:201');
    assert.equal(formatIPv6(ipToBytes('1:0:0:2:0:0:0:3')), '1:0:0:2::3');
    assert.equal(ptrName('192.0.2.1'), '1.2.0.192.in-addr.arpa');
    assert.equal(ptrName('2001:db8::1'), '1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa');
    assert.equal(reverseAddressLabels('127.0.0.2'), '2.0.0.127');
  });
});

describe('DnsResolver against a DNS server on loopback', () => {
  let server: TestDnsServer;
  let resolver: DnsResolver;
  const dkimKey = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const dkimTxt = `v=DKIM1; k=rsa; p=${dkimKey.publicKey.export({ type: 'spki', format: 'der' }).toString('base64')}`;

  before(async () => {
    server = await new TestDnsServer({ records: [
      { name: 'example.test', type: 'A', value: '192.0.2.10' },
      { name: 'example.test', type: 'AAAA', value: '2001:db8::10' },
      { name: 'example.test', type: 'MX', value: '10 mx1.example.test.' },
      { name: 'example.test', type: 'MX', value: { priority: 20, exchange: 'mx2.example.test' } },
      { name: 'example.test', type: 'TXT', value: 'v=spf1 ip4:127.0.0.5 mx -all' },
      { name: 'example.test', type: 'TXT', value: ['first part', 'second part'] },
      { name: 'mx1.example.test', type: 'A', value: '127.0.0.21' },
      { name: 'mx2.example.test', type: 'A', value: '127.0.0.22' },
      { name: 'www.example.test', type: 'CNAME', value: 'example.test' },
      { name: 'sel._domainkey.example.test', type: 'TXT', value: dkimTxt },
      { name: '192.0.2.10', type: 'PTR', value: 'example.test' },
      { name: '2001:db8::10', type: 'PTR', value: 'v6.example.test' },
    ] }).start();
    resolver = resolverFor(server);
  });
  after(() => server.close());

  test('every record type, in node:dns shapes', async () => {
    assert.deepEqual(await resolver.resolveA('example.test'), ['192.0.2.10']);
    assert.deepEqual(await resolver.resolveAAAA('EXAMPLE.test.'), ['2001:db8::10']);
    assert.deepEqual((await resolver.resolveMx('example.test')).sort((a, b) => a.priority - b.priority),
      [{ exchange: 'mx1.example.test', priority: 10 }, { exchange: 'mx2.example.test', priority: 20 }]);
    assert.deepEqual((await resolver.resolveTxt('example.test')).sort(),
      [['first part', 'second part'], ['v=spf1 ip4:127.0.0.5 mx -all']]);
    assert.deepEqual(await resolver.resolvePtr('192.0.2.10'), ['example.test']);
    assert.deepEqual(await resolver.resolvePtr('2001:db8::10'), ['v6.example.test']);
    assert.deepEqual(await resolver.resolveCname('www.example.test'), ['example.test']);
    assert.deepEqual(await resolver.resolveA('www.example.test'), ['192.0.2.10'], 'A through a CNAME');
  });

  test('a DKIM key longer than 255 bytes comes back whole, split into character-strings', async () => {
    const txt = await resolver.resolveTxt('sel._domainkey.example.test');
    assert.equal(txt.length, 1);
    assert.ok(txt[0].length > 1, 'expected several character-strings');
    assert.ok(txt[0].every((s) => Buffer.byteLength(s) <= 255));
    assert.equal(txt[0].join(''), dkimTxt);
  });

  test('node:dns (c-ares) reads the test server the same way', async () => {
    const cares = new dns.promises.Resolver({ timeout: 1000, tries: 1 });
    cares.setServers([server.address]);
    const ours = resolver.mailauthResolver();
    for (const [name, type] of [['example.test', 'A'], ['example.test', 'AAAA'], ['example.test', 'MX'], ['example.test', 'TXT'],
      ['10.2.0.192.in-addr.arpa', 'PTR'], ['www.example.test', 'CNAME'], ['sel._domainkey.example.test', 'TXT']]) {
      const sort = (v: unknown[]) => v.map((x) => JSON.stringify(x)).sort();
      assert.deepEqual(sort(await ours(name, type)), sort(await cares.resolve(name, type) as unknown[]), `${type} ${name}`);
    }
    for (const [name, type] of [['nowhere.test', 'A'], ['example.test', 'PTR']]) {
      const want = await cares.resolve(name, type).then(() => 'resolved', (e) => e.code);
      const got = await ours(name, type).then(() => 'resolved', (e) => e.code);
      assert.equal(got, want, `${type} ${name}`);
    }
  });

  test('NXDOMAIN and NODATA are permanent DnsErrors', async () => {
    await rejectsWith(resolver.resolveA('nowhere.test'), 'NXDOMAIN', false);
    await rejectsWith(resolver.resolveMx('mx1.example.test'), 'NODATA', false);
    await rejectsWith(resolver.resolveA('_domainkey.example.test'), 'NODATA', false); // empty non-terminal
    await rejectsWith(resolver.resolveA('bad..name.test'), 'NXDOMAIN', false);
  });

  test('mailauth error codes: ENOTFOUND, ENODATA, ETIMEOUT, ESERVFAIL', async () => {
    const ma = resolver.mailauthResolver();
    server.timeoutFor('slow.example.test');
    server.servfailFor('broken.example.test');
    const code = (p: Promise<unknown>) => p.then(() => 'resolved', (e) => e.code);
    assert.equal(await code(ma('nowhere.test', 'TXT')), 'ENOTFOUND');
    assert.equal(await code(ma('mx1.example.test', 'TXT')), 'ENODATA');
    assert.equal(await code(ma('slow.example.test', 'TXT')), 'ETIMEOUT');
    assert.equal(await code(ma('broken.example.test', 'TXT')), 'ESERVFAIL');
  });

  test("mailauth's spf() through our resolver: pass, fail, mx mechanism", async () => {
    const check = async (ip: string) => (await spf({
      sender: 'alice@example.test', ip, helo: 'client.example.test', mta: 'mx.postern.test', resolver: resolver.mailauthResolver(),
    })).status.result;
    assert.equal(await check('127.0.0.5'), 'pass');
    assert.equal(await check('127.0.0.22'), 'pass', 'an address of an MX host (mx mechanism)');
    assert.equal(await check('127.0.0.9'), 'fail');
  });

  test("mailauth's DKIM verifier finds the split key through our resolver", async () => {
    const message = 'From: alice@example.test\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nHello.\r\n';
    const signed = await dkimSign(message, {
      canonicalization: 'relaxed/relaxed', algorithm: 'rsa-sha256',
      signatureData: [{ signingDomain: 'example.test', selector: 'sel', privateKey: dkimKey.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string }],
    } as any);
    const result = await dkimVerify(signed.signatures + message, { resolver: resolver.mailauthResolver() });
    assert.equal(result.results[0].status.result, 'pass');
  });
});

describe('DnsResolver cache', () => {
  test('positive answers are cached for their TTL, then asked again', async () => {
    const server = await new TestDnsServer({ records: [{ name: 'short.test', type: 'A', value: '192.0.2.1', ttl: 1 }] }).start();
    try {
      const r = resolverFor(server);
      assert.deepEqual(await r.resolveA('short.test'), ['192.0.2.1']);
      assert.deepEqual(await r.resolveA('SHORT.test'), ['192.0.2.1']);
      assert.equal(server.queries('short.test', 'A'), 1, 'second lookup should come from the cache');
      await sleep(1500);
      assert.deepEqual(await r.resolveA('short.test'), ['192.0.2.1']);
      assert.equal(server.queries('short.test', 'A'), 2, 'expired entry should be asked again');
    } finally { await server.close(); }
  });

  test('concurrent identical lookups share one query', async () => {
    const server = await new TestDnsServer({ records: [{ name: 'busy.test', type: 'MX', value: '10 mx.busy.test' }] }).start();
    try {
      const r = resolverFor(server);
      const all = await Promise.all(Array.from({ length: 10 }, () => r.resolveMx('busy.test')));
      assert.ok(all.every((mx) => mx[0].exchange === 'mx.busy.test'));
      assert.equal(server.queries('busy.test', 'MX'), 1);
    } finally { await server.close(); }
  });

  test('negative answers are cached for the SOA minimum, then asked again', async () => {
    const server = await new TestDnsServer({ negativeTtl: 1, records: [{ name: 'there.test', type: 'A', value: '192.0.2.1' }] }).start();
    try {
      const r = resolverFor(server);
      await rejectsWith(r.resolveA('missing.test'), 'NXDOMAIN', false);
      await rejectsWith(r.resolveA('missing.test'), 'NXDOMAIN', false);
      await rejectsWith(r.resolveTxt('there.test'), 'NODATA', false);
      await rejectsWith(r.resolveTxt('there.test'), 'NODATA', false);
      assert.equal(server.queries('missing.test', 'A'), 1);
      assert.equal(server.queries('there.test', 'TXT'), 1);
      server.add({ name: 'missing.test', type: 'A', value: '192.0.2.2' });
      await sleep(1500);
      assert.deepEqual(await r.resolveA('missing.test'), ['192.0.2.2']);
      assert.equal(server.queries('missing.test', 'A'), 2);
    } finally { await server.close(); }
  });

  test('temporary failures are not cached', async () => {
    const server = await new TestDnsServer({ records: [{ name: 'flaky.test', type: 'A', value: '192.0.2.3' }] }).start();
    try {
      const r = resolverFor(server);
      server.servfailFor('flaky.test');
      await rejectsWith(r.resolveA('flaky.test'), 'SERVFAIL', true);
      server.heal('flaky.test');
      assert.deepEqual(await r.resolveA('flaky.test'), ['192.0.2.3']);
    } finally { await server.close(); }
  });
});

describe('DnsResolver transport', () => {
  test('no answer is a temporary TIMEOUT; the next server is then asked', async () => {
    const a = await new TestDnsServer({ records: [{ name: 'x.test', type: 'A', value: '192.0.2.1' }] }).start();
    const b = await new TestDnsServer({ records: [{ name: 'x.test', type: 'A', value: '192.0.2.2' }] }).start();
    try {
      a.timeoutFor('x.test');
      await rejectsWith(resolverFor(a).resolveA('x.test'), 'TIMEOUT', true);
      assert.deepEqual(await resolverFor(a, b).resolveA('x.test'), ['192.0.2.2']);
      assert.equal(b.queries('x.test', 'A'), 1);
    } finally { await a.close(); await b.close(); }
  });

  test('a server that refuses or fails, or a port nobody listens on, passes the query on', async () => {
    const good = await new TestDnsServer({ records: [{ name: 'y.test', type: 'A', value: '192.0.2.4' }] }).start();
    const bad = await new TestDnsServer({ records: [{ name: 'y.test', type: 'A', value: '192.0.2.5' }] }).start();
    const closed = dgram.createSocket('udp4');
    await new Promise<void>((r) => closed.bind(0, '127.0.0.1', () => r()));
    const deadPort = closed.address().port;
    await new Promise<void>((r) => closed.close(() => r()));
    try {
      bad.servfailFor('y.test');
      const r = new DnsResolver({ servers: [{ host: '127.0.0.1', port: deadPort }, { host: bad.host, port: bad.port }, { host: good.host, port: good.port }], timeoutMs: 400 });
      assert.deepEqual(await r.resolveA('y.test'), ['192.0.2.4']);
      assert.equal(bad.queries('y.test', 'A'), 1);
    } finally { await good.close(); await bad.close(); }
  });

  test('a truncated UDP answer is asked again over TCP', async () => {
    const big = 'x'.repeat(3000);
    const server = await new TestDnsServer({ records: [{ name: 'big.test', type: 'TXT', value: big }] }).start();
    try {
      const txt = await resolverFor(server).resolveTxt('big.test');
      assert.equal(txt[0].join(''), big);
      assert.equal(server.transport.udp, 1);
      assert.equal(server.transport.tcp, 1);
    } finally { await server.close(); }
  });

  test('the server can force truncation below the EDNS buffer size', async () => {
    const value = 'y'.repeat(600);
    const server = await new TestDnsServer({ maxUdpSize: 512, records: [{ name: 'mid.test', type: 'TXT', value }] }).start();
    try {
      assert.equal((await resolverFor(server).resolveTxt('mid.test'))[0].join(''), value);
      assert.equal(server.transport.tcp, 1);
    } finally { await server.close(); }
  });
});

describe('resolveMailHosts', () => {
  let server: TestDnsServer;
  let resolver: DnsResolver;
  before(async () => {
    server = await new TestDnsServer({ records: [
      { name: 'ordered.test', type: 'MX', value: '30 c.mx.test' },
      { name: 'ordered.test', type: 'MX', value: '10 a.mx.test' },
      { name: 'ordered.test', type: 'MX', value: '20 b.mx.test' },
      { name: 'a.mx.test', type: 'A', value: '127.0.0.11' },
      { name: 'a.mx.test', type: 'AAAA', value: '::1' },
      { name: 'b.mx.test', type: 'A', value: '127.0.0.12' },
      { name: 'c.mx.test', type: 'A', value: '127.0.0.13' },
      { name: 'equal.test', type: 'MX', value: '10 a.mx.test' },
      { name: 'equal.test', type: 'MX', value: '10 b.mx.test' },
      { name: 'plain.test', type: 'A', value: '127.0.0.14' },
      { name: 'nomail.test', type: 'MX', value: '0 .' },
      { name: 'nomail.test', type: 'A', value: '127.0.0.15' },
      { name: 'halfbroken.test', type: 'MX', value: '10 gone.mx.test' },
      { name: 'halfbroken.test', type: 'MX', value: '20 c.mx.test' },
      { name: 'allgone.test', type: 'MX', value: '10 gone.mx.test' },
      { name: 'slowmx.test', type: 'MX', value: '10 slow.mx.test' },
      { name: 'noaddress.test', type: 'TXT', value: 'v=spf1 -all' },
    ] }).start();
    server.timeoutFor('slow.mx.test');
    resolver = resolverFor(server);
  });
  after(() => server.close());

  test('MX hosts by preference, each with its addresses (IPv4 first)', async () => {
    const r = await resolveMailHosts(resolver, 'ordered.test');
    assert.equal(r.nullMx, false);
    assert.deepEqual(r.hosts, [
      { name: 'a.mx.test', priority: 10, addresses: ['127.0.0.11', '::1'] },
      { name: 'b.mx.test', priority: 20, addresses: ['127.0.0.12'] },
      { name: 'c.mx.test', priority: 30, addresses: ['127.0.0.13'] },
    ]);
  });

  test('equal preferences come in both orders', async () => {
    const seen = new Set<string>();
    for (let i = 0; i < 200 && seen.size < 2; i++) {
      seen.add((await resolveMailHosts(resolver, 'equal.test')).hosts.map((h) => h.name).join(' '));
    }
    assert.deepEqual([...seen].sort(), ['a.mx.test b.mx.test', 'b.mx.test a.mx.test']);
  });

  test('no MX: the domain itself is the mail host', async () => {
    assert.deepEqual(await resolveMailHosts(resolver, 'plain.test'),
      { nullMx: false, hosts: [{ name: 'plain.test', priority: 0, addresses: ['127.0.0.14'] }] });
  });

  test('a null MX (RFC 7505) says the domain takes no mail', async () => {
    assert.deepEqual(await resolveMailHosts(resolver, 'nomail.test'), { nullMx: true, hosts: [] });
  });

  test('a domain that does not exist is a permanent NXDOMAIN', async () => {
    await rejectsWith(resolveMailHosts(resolver, 'nonexistent.test'), 'NXDOMAIN', false);
  });

  test('a host that does not resolve is kept without addresses', async () => {
    const r = await resolveMailHosts(resolver, 'halfbroken.test');
    assert.deepEqual(r.hosts, [
      { name: 'gone.mx.test', priority: 10, addresses: [] },
      { name: 'c.mx.test', priority: 20, addresses: ['127.0.0.13'] },
    ]);
  });

  test('no host with an address: NODATA, or the temporary error when one was temporary', async () => {
    await rejectsWith(resolveMailHosts(resolver, 'allgone.test'), 'NODATA', false);
    await rejectsWith(resolveMailHosts(resolver, 'noaddress.test'), 'NODATA', false);
    await rejectsWith(resolveMailHosts(resolver, 'slowmx.test'), 'TIMEOUT', true);
  });
});

describe('resolver configuration', () => {
  test('dns_servers forms', () => {
    assert.deepEqual(parseDnsServer('192.0.2.1'), { host: '192.0.2.1', port: 53 });
    assert.deepEqual(parseDnsServer('127.0.0.1:5353'), { host: '127.0.0.1', port: 5353 });
    assert.deepEqual(parseDnsServer('[::1]:5353'), { host: '::1', port: 5353 });
    assert.deepEqual(parseDnsServer('[::1]'), { host: '::1', port: 53 });
    assert.deepEqual(parseDnsServer('2001:db8::53'), { host: '2001:db8::53', port: 53 });
    assert.equal(parseDnsServer('dns.example.test'), null);
    assert.equal(parseDnsServer('127.0.0.1:99999'), null);
  });

  test('resolv.conf nameserver lines, and 127.0.0.1 without any', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'postern-dns-'));
    try {
      const file = path.join(dir, 'resolv.conf');
      fs.writeFileSync(file, '# comment\nsearch example.test\nnameserver 192.0.2.53\nnameserver ::1\noptions edns0\n');
      assert.deepEqual(systemDnsServers(file), [{ host: '192.0.2.53', port: 53 }, { host: '::1', port: 53 }]);
      assert.deepEqual(systemDnsServers(path.join(dir, 'missing')), [{ host: '127.0.0.1', port: 53 }]);
    } finally { fs.rmSync(dir, { recursive: true, force: true }); }
  });

  test('fromConfig reads dns_servers and dns_timeout; a bad server names main.cf and the line', async () => {
    const server = await new TestDnsServer({ records: [{ name: 'cfg.test', type: 'A', value: '192.0.2.9' }] }).start();
    try {
      const cfg = MainConfig.parse(`myhostname = mx.test\ndns_servers = ${server.address}, [::1]:5353\ndns_timeout = 2s\n`, '/etc/postern/main.cf');
      const r = DnsResolver.fromConfig(cfg);
      assert.deepEqual(r.servers, [{ host: '127.0.0.1', port: server.port }, { host: '::1', port: 5353 }]);
      assert.equal(r.timeoutMs, 2000);
      assert.deepEqual(await r.resolveA('cfg.test'), ['192.0.2.9']);
      assert.throws(() => DnsResolver.fromConfig(MainConfig.parse('dns_servers = dns.example.test\n', '/etc/postern/main.cf')),
        (e: unknown) => e instanceof ConfigError && /^main\.cf:1: dns_servers: "dns.example.test"/.test(e.message));
    } finally { await server.close(); }
  });

  test('sharedResolver keeps one instance while dns_servers and dns_timeout stay the same', () => {
    const a = MainConfig.parse('dns_servers = 127.0.0.1:5300\n', 'main.cf');
    const b = MainConfig.parse('dns_servers = 127.0.0.1:5300\nmyhostname = other.test\n', 'main.cf');
    const c = MainConfig.parse('dns_servers = 127.0.0.1:5301\n', 'main.cf');
    const first = sharedResolver(a);
    assert.equal(sharedResolver(b), first);
    assert.notEqual(sharedResolver(c), first);
  });
});
