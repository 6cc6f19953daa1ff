/**
 * The DNSSEC additions to the DNS layer (issue 13 item 2): TLSA records on the
 * wire, the DO and AD bits of a query, and resolveSecure trusting only the
 * resolver's AD bit (the test DNS server, not validating, never sets it).
 */
import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import {
  encodeDnsMessage, decodeDnsMessage, encodeDnsQuery, DnsResolver, DNS_TYPES,
} from '../../packages/common/dist/index.js';
import { TestDnsServer } from './dns-server.js';

describe('DNS: TLSA and the AD bit', () => {
  it('a TLSA record survives encode and decode; a reply with AD decodes with ad: true', () => {
    const data = Buffer.alloc(32, 0xab);
    const wire = encodeDnsMessage({ id: 7, qr: true, opcode: 0, aa: false, tc: false, rd: true, ra: true, ad: true, rcode: 0,
      questions: [{ name: '_25._tcp.mx.example.test', type: DNS_TYPES.TLSA, class: 1 }],
      answers: [{ name: '_25._tcp.mx.example.test', type: 'TLSA', class: 1, ttl: 60, data: { usage: 3, selector: 1, matchingType: 1, data } }],
      authorities: [], additionals: [] });
    const m = decodeDnsMessage(wire);
    assert.equal(m.ad, true);
    const r = m.answers[0];
    assert.equal(r.type, 'TLSA');
    assert.deepEqual(r.type === 'TLSA' && [r.data.usage, r.data.selector, r.data.matchingType], [3, 1, 1]);
    assert.ok(r.type === 'TLSA' && r.data.data.equals(data));
  });

  it('a dnssec query sets AD in the header and DO in the OPT record; a plain one sets neither', () => {
    const sec = decodeDnsMessage(encodeDnsQuery(1, 'example.test', 'MX', 1232, true));
    assert.equal(sec.ad, true);
    assert.equal(sec.additionals[0].ttl & 0x8000, 0x8000);
    const plain = decodeDnsMessage(encodeDnsQuery(1, 'example.test', 'MX', 1232));
    assert.equal(plain.ad, undefined);
    assert.equal(plain.additionals[0].ttl, 0);
  });

  it('resolveSecure reports insecure when the resolver does not set AD, and a secure flag on negative answers', async () => {
    const dns = await new TestDnsServer({ records: [{ name: 'x.test', type: 'MX', value: '10 mx.x.test' }] }).start();
    try {
      const r = new DnsResolver({ servers: [{ host: dns.host, port: dns.port }], timeoutMs: 2000 });
      const a = await r.resolveSecure('x.test', 'MX');
      assert.equal(a.secure, false);
      assert.equal(a.records[0].data.exchange, 'mx.x.test');
      await assert.rejects(r.resolveSecure('_25._tcp.mx.x.test', 'TLSA'), (e: any) => e.code === 'NXDOMAIN' && e.secure === false);
    } finally { await dns.close(); }
  });
});
