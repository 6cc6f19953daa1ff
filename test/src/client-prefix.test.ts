/**
 * IPv6 clients and the client limits (issue 8, item 10): anvil counts an IPv6
 * client per network block (smtpd_client_ipv6_prefix_length, /64 by default),
 * so a client cannot dodge a connection or rate limit by using another
 * address of its own /64. Loopback has no second IPv6 address, so the
 * address-to-key function is tested directly, and a real connection count
 * limit over ::1 shows the keyed count still reaches anvil and applies.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Instance, RawSmtp, freePort, waitFor } from './harness.js';
import { TestDnsServer } from './dns-server.js';
import { paramSpec, requestJson } from '../../packages/common/dist/index.js';
import * as limits from '../../packages/smtpd/dist/limits.js';

const clientKey = (limits as any).clientKey as (address: string, v4: number, v6: number) => string;

describe('the anvil key of a client address', () => {
  it('puts 2001:db8::1 and 2001:db8::2 under one key, 2001:db8:0:1::1 under another (/64)', () => {
    assert.equal(typeof clientKey, 'function', 'limits.ts exports clientKey(address, ipv4_prefix, ipv6_prefix)');
    const key = (a: string) => clientKey(a, 32, 64);
    assert.equal(key('2001:db8::1'), key('2001:db8::2'));
    assert.notEqual(key('2001:db8::1'), key('2001:db8:0:1::1'));
    assert.equal(key('2001:db8::1'), '2001:db8::/64');
    assert.equal(key('2001:DB8:0:0:ffff:1:2:3'), '2001:db8::/64', 'any spelling of the address gives the same key');
    assert.equal(key('::1'), '::/64');
  });

  it('keeps IPv4 addresses whole at /32, reads IPv4-mapped IPv6 as IPv4, and honours other prefixes', () => {
    assert.equal(clientKey('192.0.2.1', 32, 64), '192.0.2.1');
    assert.equal(clientKey('::ffff:192.0.2.1', 32, 64), '192.0.2.1');
    assert.equal(clientKey('192.0.2.77', 24, 64), '192.0.2.0/24');
    assert.equal(clientKey('2001:db8::1', 32, 128), '2001:db8::1', '/128 is the address itself');
    assert.equal(clientKey('2001:db8:1234:5678:9abc::1', 32, 56), '2001:db8:1234:5600::/56');
  });

  it('is configured by smtpd_client_ipv6_prefix_length (default 64) and smtpd_client_ipv4_prefix_length (32)', () => {
    assert.equal(paramSpec('smtpd_client_ipv6_prefix_length')?.default, '64');
    assert.equal(paramSpec('smtpd_client_ipv4_prefix_length')?.default, '32');
  });
});

describe('a connection count limit for a client on ::1', () => {
  let inst: Instance;
  let dns: TestDnsServer;
  let port = 0;

  before(async () => {
    dns = await new TestDnsServer().start();
    inst = await Instance.create({
      main: {
        mynetworks: '10.255.0.0/16',
        dns_servers: dns.address,
        smtpd_client_restrictions: 'permit_mynetworks, permit_sasl_authenticated',
      },
    });
    port = await freePort('::1');
    fs.appendFileSync(path.join(inst.etc, 'master.cf'), `[::1]:${port}  inet  -  1  smtpd  -o smtpd_client_connection_count_limit=1\n`);
    await inst.start();
  });
  after(async () => { await inst?.destroy(); await dns?.close(); });

  it('refuses the second connection from ::1 with 421 4.7.0', async () => {
    const first = await RawSmtp.connect(port, { host: '::1' });
    try {
      assert.match(first.greeting, /^220 /);
      const second = await RawSmtp.connect(port, { host: '::1' });
      assert.equal(second.greeting, '421 4.7.0 mx.example.test Error: too many connections from ::1');
      await waitFor('the refused connection closed', () => second.closed, 5000);
      const warn = await inst.waitForLog('the limit logged', (e) => /Connection concurrency limit exceeded: 2 from unknown\[::1\]/.test(e.msg));
      assert.equal(warn.status, 'reject');
      // what smtpd told anvil: the open connection is counted under the client's /64, not its address
      const anvil = path.join(inst.spool, 'private', 'anvil');
      const lookup = (client: string) => requestJson(anvil, { type: 'lookup', service: warn.listener, client });
      assert.equal((await lookup('::/64')).count, 1, 'the open connection from ::1 counts for ::/64');
      assert.equal((await lookup('::1')).count, 0, 'nothing is counted under the bare address');
    } finally { first.close(); }
  });
});
