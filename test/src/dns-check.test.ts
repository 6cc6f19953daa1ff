/**
 * `postern dns check` (issue 14, item 2) against a real DNS server on loopback
 * (TestDnsServer, reached through the instance's dns_servers): each record
 * right and then wrong in turn (MX, PTR, SPF, DKIM, DMARC, MTA-STS, TLS-RPT),
 * asserting the finding and the exact record it tells the administrator to publish.
 * The MTA-STS policy is served over HTTPS on loopback (a test CA, trusted
 * through smtp_tls_CAfile, port smtp_mta_sts_https_port), so the check compares
 * the policy's mx: lines with the domain's MX.
 */
import { describe, it, before, after, beforeEach } from 'node:test';
import * as assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import * as https from 'node:https';
import { Instance, POSTERN, freePort, runAsync } from './harness.js';
import { TestDnsServer, TestRecord } from './dns-server.js';
import { TestCa } from './tls-fixtures.js';

const DOMAIN = 'example.test';
const HOST = 'mx.example.test';

interface Finding { level: string; domain: string; check: string; problem: string; records: string[] }

describe('postern dns check', () => {
  let dns: TestDnsServer;
  let inst: Instance;
  let dkimTxt: string;
  /** A second key of the domain (dual signing, Ed25519 beside RSA): every key of the signing table is checked. */
  let edTxt: string;
  let loaded: TestRecord[] = [];
  let policyServer: https.Server;
  /** What https://mta-sts.DOMAIN/.well-known/mta-sts.txt serves; null: 404. */
  let policy: string | null = null;
  const GOOD_POLICY = `version: STSv1\nmode: enforce\nmx: ${HOST}\nmax_age: 604800\n`;

  /** Every record right: the zone an administrator following docs/install.md publishes. */
  const goodZone = (): Record<string, TestRecord[]> => ({
    mx: [{ name: DOMAIN, type: 'MX', value: `10 ${HOST}` }],
    a: [{ name: HOST, type: 'A', value: '127.0.0.1' }],
    ptr: [{ name: '127.0.0.1', type: 'PTR', value: HOST }],
    spf: [{ name: DOMAIN, type: 'TXT', value: 'v=spf1 ip4:127.0.0.1 -all' }],
    dkim: [{ name: `sel1._domainkey.${DOMAIN}`, type: 'TXT', value: dkimTxt }],
    dkimEd: [{ name: `ed1._domainkey.${DOMAIN}`, type: 'TXT', value: edTxt }],
    dmarc: [{ name: `_dmarc.${DOMAIN}`, type: 'TXT', value: `v=DMARC1; p=reject; rua=mailto:postmaster@${DOMAIN}` }],
    sts: [{ name: `_mta-sts.${DOMAIN}`, type: 'TXT', value: 'v=STSv1; id=20261203' }, { name: `mta-sts.${DOMAIN}`, type: 'A', value: '127.0.0.1' }],
    rpt: [{ name: `_smtp._tls.${DOMAIN}`, type: 'TXT', value: `v=TLSRPTv1; rua=mailto:tlsrpt@${DOMAIN}` }],
  });

  /** Replace the zone: the good one with `changes` applied (an empty list removes that part). */
  function zone(changes: Record<string, TestRecord[]> = {}): void {
    for (const r of loaded) dns.remove(r.name, r.type);
    loaded = Object.values({ ...goodZone(), ...changes }).flat();
    for (const r of loaded) dns.add(r);
  }

  async function check(args: string[] = []): Promise<{ code: number; report: any; findings: Finding[]; stderr: string }> {
    // async: the DNS server answers from this process
    const r = await runAsync(process.execPath, [POSTERN, '-c', inst.etc, 'dns', 'check', '--json', ...args]);
    const report = r.stdout.trim() ? JSON.parse(r.stdout) : null;
    return { code: r.code, report, findings: report?.findings ?? [], stderr: r.stderr };
  }
  const of = (fs: Finding[], check: string, level?: string) => fs.filter((f) => f.check === check && (!level || f.level === level));

  before(async () => {
    dns = await new TestDnsServer().start();
    const ca = new TestCa();
    const web = ca.issue([`mta-sts.${DOMAIN}`]);
    policyServer = https.createServer({ key: web.key, cert: web.cert }, (req, res) => {
      if (req.url !== '/.well-known/mta-sts.txt' || policy === null) { res.writeHead(404); res.end(); return; }
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(policy);
    });
    const httpsPort = await freePort();
    await new Promise<void>((r) => policyServer.listen(httpsPort, '127.0.0.1', r));
    inst = await Instance.create({ domain: DOMAIN, hostname: HOST, main: { dns_servers: dns.address, dns_timeout: '3s',
      smtp_tls_CAfile: ca.certFile, smtp_mta_sts_https_port: String(httpsPort) } });
    const key = JSON.parse(inst.cli(['dkim', 'keygen', DOMAIN, '--selector', 'sel1', '--json']).stdout);
    dkimTxt = key.txt;
    edTxt = JSON.parse(inst.cli(['dkim', 'keygen', DOMAIN, '--selector', 'ed1', '--algorithm', 'ed25519', '--json']).stdout).txt;
  });
  after(async () => { await inst?.destroy(); await dns?.close(); policyServer?.close(); });
  beforeEach(() => { zone(); policy = GOOD_POLICY; });

  it('every record right: exit 0, an ok finding per check, no error or warning', async () => {
    const { code, report, findings } = await check();
    assert.equal(code, 0, JSON.stringify(findings));
    assert.deepEqual(report.domains, [DOMAIN]);
    assert.deepEqual(report.public_addresses, ['127.0.0.1']);
    assert.equal(report.errors, 0);
    assert.equal(report.warnings, 0);
    for (const c of ['mx', 'ptr', 'spf', 'dkim', 'dmarc', 'mta-sts', 'tls-rpt']) {
      assert.equal(of(findings, c, 'ok').length, c === 'dkim' ? 2 : 1, `${c}: ${JSON.stringify(findings)}`);
      assert.equal(of(findings, c).filter((f) => f.level !== 'ok').length, 0, `${c}: ${JSON.stringify(findings)}`);
    }
  });

  it('human output: one finding a line (level, domain, check, problem, record), exit 1 on an error', async () => {
    zone({ mx: [] });
    const r = await runAsync(process.execPath, [POSTERN, '-c', inst.etc, 'dns', 'check']);
    assert.equal(r.code, 1);
    const line = r.stdout.split('\n').find((l) => l.startsWith('error'));
    assert.equal(line, `error   ${DOMAIN} mx: no MX record: mail for ${DOMAIN} cannot reach this host; publish: ${DOMAIN}. IN MX 10 ${HOST}.`);
    assert.match(r.stderr, /postern: dns check: 1 error\(s\), 0 warning\(s\)/);
  });

  it('MX missing', async () => {
    zone({ mx: [] });
    const { code, findings } = await check();
    assert.equal(code, 1);
    const [f] = of(findings, 'mx', 'error');
    assert.equal(f.problem, `no MX record: mail for ${DOMAIN} cannot reach this host`);
    assert.deepEqual(f.records, [`${DOMAIN}. IN MX 10 ${HOST}.`]);
  });

  it('MX pointing to a name with no address', async () => {
    zone({ mx: [{ name: DOMAIN, type: 'MX', value: '10 mail.example.test' }] });
    const { code, findings } = await check();
    assert.equal(code, 1);
    const [f] = of(findings, 'mx', 'error');
    assert.equal(f.problem, 'MX host mail.example.test has no address (A/AAAA)');
    assert.deepEqual(f.records, ['mail.example.test. IN A 127.0.0.1']);
  });

  it('MX pointing to an address that is not ours', async () => {
    zone({ mx: [{ name: DOMAIN, type: 'MX', value: '10 mx.elsewhere.test' }, { name: 'mx.elsewhere.test', type: 'A', value: '192.0.2.9' }] });
    const { code, findings } = await check();
    assert.equal(code, 1);
    const [f] = of(findings, 'mx', 'error');
    assert.equal(f.problem, 'MX mx.elsewhere.test (192.0.2.9) is not an address this host listens on (127.0.0.1)');
    assert.deepEqual(f.records, [`${DOMAIN}. IN MX 10 ${HOST}.`]);
  });

  it('PTR missing', async () => {
    zone({ ptr: [] });
    const { code, findings } = await check();
    assert.equal(code, 1);
    const [f] = of(findings, 'ptr', 'error');
    assert.match(f.problem, /^no PTR record for 127\.0\.0\.1/);
    assert.equal(f.domain, HOST);
    assert.deepEqual(f.records, [`1.0.0.127.in-addr.arpa. IN PTR ${HOST}.`]);
  });

  it('PTR not naming myhostname', async () => {
    zone({ ptr: [{ name: '127.0.0.1', type: 'PTR', value: 'localhost.example.test' }] });
    const { findings } = await check();
    const [f] = of(findings, 'ptr', 'error');
    assert.equal(f.problem, `PTR of 127.0.0.1 names localhost.example.test, not myhostname ${HOST}`);
    assert.deepEqual(f.records, [`1.0.0.127.in-addr.arpa. IN PTR ${HOST}.`]);
  });

  it('PTR not forward-confirmed', async () => {
    // the PTR names myhostname, but myhostname's A record is another address (the MX is then not ours either)
    zone({ a: [{ name: HOST, type: 'A', value: '192.0.2.1' }] });
    const { code, findings } = await check();
    assert.equal(code, 1);
    const [f] = of(findings, 'ptr', 'error');
    assert.equal(f.problem, `PTR of 127.0.0.1 names ${HOST}, but ${HOST} resolves to 192.0.2.1, not back to 127.0.0.1 (not forward-confirmed)`);
    assert.deepEqual(f.records, [`${HOST}. IN A 127.0.0.1`]);
  });

  it('SPF missing', async () => {
    zone({ spf: [] });
    const { code, findings } = await check();
    assert.equal(code, 1);
    const [f] = of(findings, 'spf', 'error');
    assert.equal(f.problem, 'no SPF record: receivers cannot tell mail from this host from forgeries');
    // the MX already names this host, so "mx" authorises exactly it
    assert.deepEqual(f.records, [`${DOMAIN}. IN TXT "v=spf1 mx -all"`]);
  });

  it('SPF not authorising this host', async () => {
    zone({ spf: [{ name: DOMAIN, type: 'TXT', value: 'v=spf1 ip4:192.0.2.1 -all' }] });
    const { code, findings } = await check();
    assert.equal(code, 1);
    const [f] = of(findings, 'spf', 'error');
    assert.equal(f.problem, 'SPF does not authorise 127.0.0.1 (fail)');
    assert.deepEqual(f.records, [`${DOMAIN}. IN TXT "v=spf1 ip4:127.0.0.1 ip4:192.0.2.1 -all"`]);
  });

  it('SPF ok through a mechanism that needs lookups (mx)', async () => {
    zone({ spf: [{ name: DOMAIN, type: 'TXT', value: 'v=spf1 mx -all' }] });
    const { findings } = await check();
    assert.deepEqual(of(findings, 'spf').map((f) => [f.level, f.problem]), [['ok', 'SPF authorises 127.0.0.1']]);
  });

  it('DKIM TXT missing', async () => {
    zone({ dkim: [] });
    const { code, findings } = await check();
    assert.equal(code, 1);
    const [f] = of(findings, 'dkim', 'error');
    assert.equal(f.problem, `no DKIM record at sel1._domainkey.${DOMAIN}: receivers cannot verify mail signed with selector sel1`);
    assert.equal(f.records.length, 1);
    // the record `postern dkim keygen` printed, split into 255-byte strings
    assert.match(f.records[0], new RegExp(`^sel1\\._domainkey\\.example\\.test\\. IN TXT "v=DKIM1; k=rsa; p=`));
    assert.equal(f.records[0].replace(/^[^"]*"|"$/g, '').split('" "').join(''), dkimTxt);
  });

  it('DKIM key mismatch', async () => {
    const other = generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey.export({ format: 'der', type: 'spki' }).toString('base64');
    zone({ dkim: [{ name: `sel1._domainkey.${DOMAIN}`, type: 'TXT', value: `v=DKIM1; k=rsa; p=${other}` }] });
    const { code, findings } = await check();
    assert.equal(code, 1);
    const [f] = of(findings, 'dkim', 'error');
    assert.match(f.problem, /^the DKIM record at sel1\._domainkey\.example\.test does not match the private key .*example\.test\.sel1\.key: signatures fail$/);
    assert.equal(f.records[0].replace(/^[^"]*"|"$/g, '').split('" "').join(''), dkimTxt);
  });

  it('DKIM ok, also when the published key is split differently', async () => {
    const p = /p=(.*)$/.exec(dkimTxt)![1];
    zone({ dkim: [{ name: `sel1._domainkey.${DOMAIN}`, type: 'TXT', value: ['v=DKIM1; k=rsa; ', `p=${p.slice(0, 100)}`, p.slice(100)] }] });
    const { findings } = await check();
    assert.deepEqual(of(findings, 'dkim').map((f) => f.level), ['ok', 'ok']);
  });

  it('DKIM: every key of the signing table is checked (the second one missing)', async () => {
    zone({ dkimEd: [] });
    const { code, findings } = await check();
    assert.equal(code, 1);
    const dkim = of(findings, 'dkim');
    assert.deepEqual(dkim.map((f) => f.level), ['ok', 'error'], JSON.stringify(dkim));
    assert.match(dkim[0].problem, /^selector sel1: the published key matches .*example\.test\.sel1\.key$/);
    assert.equal(dkim[1].problem, `no DKIM record at ed1._domainkey.${DOMAIN}: receivers cannot verify mail signed with selector ed1`);
    assert.deepEqual(of(findings, 'dkim', 'error')[0].records, [`ed1._domainkey.${DOMAIN}. IN TXT "${edTxt}"`]);
  });

  it('DMARC missing', async () => {
    zone({ dmarc: [] });
    const { code, findings } = await check();
    assert.equal(code, 1);
    const [f] = of(findings, 'dmarc', 'error');
    assert.equal(f.problem, `no DMARC record at _dmarc.${DOMAIN}`);
    assert.deepEqual(f.records, [`_dmarc.${DOMAIN}. IN TXT "v=DMARC1; p=none; rua=mailto:postmaster@${DOMAIN}"`]);
  });

  it('DMARC unparsable', async () => {
    zone({ dmarc: [{ name: `_dmarc.${DOMAIN}`, type: 'TXT', value: 'v=DMARC1; p=maybe' }] });
    const { code, findings } = await check();
    assert.equal(code, 1);
    const [f] = of(findings, 'dmarc', 'error');
    assert.equal(f.problem, 'the DMARC record does not parse: p=maybe is not none, quarantine or reject');
    assert.deepEqual(f.records, [`_dmarc.${DOMAIN}. IN TXT "v=DMARC1; p=none; rua=mailto:postmaster@${DOMAIN}"`]);

    zone({ dmarc: [{ name: `_dmarc.${DOMAIN}`, type: 'TXT', value: 'v=DMARC1; rua=mailto:postmaster@example.test' }] });
    const again = of((await check()).findings, 'dmarc', 'error');
    assert.equal(again[0].problem, 'the DMARC record does not parse: the p= tag (none, quarantine or reject) is missing');
  });

  it('DMARC ok', async () => {
    const { findings } = await check();
    assert.deepEqual(of(findings, 'dmarc').map((f) => [f.level, f.problem]),
      [['ok', `DMARC policy v=DMARC1; p=reject; rua=mailto:postmaster@${DOMAIN}`]]);
  });

  it('MTA-STS and TLS-RPT: absent is info with the record; a bad one is an error', async () => {
    zone({ sts: [], rpt: [] });
    let r = await check();
    assert.equal(r.code, 0, JSON.stringify(r.findings));
    const [sts] = of(r.findings, 'mta-sts', 'info');
    assert.match(sts.records[0], /^_mta-sts\.example\.test\. IN TXT "v=STSv1; id=\d{14}"$/);
    assert.deepEqual(of(r.findings, 'tls-rpt', 'info')[0].records, [`_smtp._tls.${DOMAIN}. IN TXT "v=TLSRPTv1; rua=mailto:postmaster@${DOMAIN}"`]);

    zone({ sts: [{ name: `_mta-sts.${DOMAIN}`, type: 'TXT', value: 'v=STSv1; id=not-valid!' }],
      rpt: [{ name: `_smtp._tls.${DOMAIN}`, type: 'TXT', value: 'v=TLSRPTv1; rua=tlsrpt@example.test' }] });
    r = await check();
    assert.equal(r.code, 1);
    assert.equal(of(r.findings, 'mta-sts', 'error')[0].problem, `the STSv1 record at _mta-sts.${DOMAIN} does not parse: id=not-valid! is not 1 to 32 letters and digits`);
    assert.equal(of(r.findings, 'tls-rpt', 'error')[0].problem, `the TLSRPTv1 record at _smtp._tls.${DOMAIN} does not parse: rua: "tlsrpt@example.test" is not a mailto: or https: URI`);
  });

  it('MTA-STS: the policy is fetched and covers the MX', async () => {
    const { findings } = await check();
    assert.deepEqual(of(findings, 'mta-sts').map((f) => [f.level, f.problem]),
      [['ok', `v=STSv1; id=20261203; policy mode enforce covers MX ${HOST}`]]);
  });

  it('MTA-STS: a policy that does not name the MX is an error (enforce), a warning (testing)', async () => {
    policy = `version: STSv1\nmode: enforce\nmx: mail.other.test\nmax_age: 604800\n`;
    let r = await check();
    assert.equal(r.code, 1);
    const [f] = of(r.findings, 'mta-sts', 'error');
    assert.equal(f.problem, `the MTA-STS policy at https://mta-sts.${DOMAIN}/.well-known/mta-sts.txt (mode enforce, mx: mail.other.test) `
      + `does not name MX ${HOST}: senders that apply it will not deliver here; add "mx: ${HOST}" to the policy, then publish a new id`);
    assert.match(f.records[0], /^_mta-sts\.example\.test\. IN TXT "v=STSv1; id=\d{14}"$/);

    policy = policy.replace('enforce', 'testing');
    r = await check();
    assert.equal(r.code, 0, JSON.stringify(r.findings));
    assert.equal(of(r.findings, 'mta-sts', 'warning').length, 1, JSON.stringify(r.findings));
  });

  it('MTA-STS: a record without a policy to fetch is an error', async () => {
    policy = null;
    const { code, findings } = await check();
    assert.equal(code, 1);
    const [f] = of(findings, 'mta-sts', 'error');
    assert.equal(f.problem, `_mta-sts.${DOMAIN} is published, but its policy cannot be fetched (https://mta-sts.${DOMAIN}/.well-known/mta-sts.txt: HTTP 404): `
      + `serve a policy there (version: STSv1, mode: testing, mx: ${HOST}, max_age: 604800, one a line) or remove the record`);
  });

  it('proxy_interfaces: the public address behind NAT is what MX, PTR and SPF must name', async () => {
    inst.cli(['config', 'set', 'proxy_interfaces=192.0.2.25']);
    try {
      zone({ a: [{ name: HOST, type: 'A', value: '192.0.2.25' }], ptr: [{ name: '192.0.2.25', type: 'PTR', value: HOST }] });
      let r = await check();
      assert.deepEqual(r.report.public_addresses, ['192.0.2.25']);
      assert.deepEqual(of(r.findings, 'mx').map((f) => f.level), ['ok']);
      assert.deepEqual(of(r.findings, 'ptr').map((f) => f.level), ['ok']);
      // the SPF record names 127.0.0.1, not the public address
      const [spf] = of(r.findings, 'spf', 'error');
      assert.equal(spf.problem, 'SPF does not authorise 192.0.2.25 (fail)');
      assert.deepEqual(spf.records, [`${DOMAIN}. IN TXT "v=spf1 ip4:192.0.2.25 ip4:127.0.0.1 -all"`]);

      inst.cli(['config', 'set', 'proxy_interfaces=not-an-address']);
      r = await check();
      assert.equal(r.code, 1);
      assert.match(r.stderr, /^postern: main\.cf:\d+: proxy_interfaces: "not-an-address" is not an IP address$/m);
    } finally {
      inst.cli(['config', 'set', 'proxy_interfaces=']);
    }
  });

  it('a named domain that is not a domain name is refused', async () => {
    const r = await check(['not_a_domain']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^postern: "not_a_domain" is not a domain name$/m);
  });
});
