/**
 * Independent DKIM verifiers for tests: dkimpy (RSA and Ed25519) and Perl's
 * Mail::DKIM (RSA), both fetching public keys from the test DNS server.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { runAsync, requireTool } from './harness.js';
import { TestDnsServer } from './dns-server.js';

export function python3(): string {
  if (!fs.existsSync('/usr/bin/python3')) throw new Error('/usr/bin/python3 is not installed (Debian python3, python3-dkim)');
  return '/usr/bin/python3';
}

/** dkimpy's verdict for each DKIM-Signature, the keys fetched from the test DNS server over UDP. */
export async function dkimpyVerify(file: string, dns: TestDnsServer): Promise<boolean[]> {
  const script = `
import sys, json, dkim, dns.resolver
r = dns.resolver.Resolver(configure=False)
r.nameservers = [sys.argv[1]]
r.port = int(sys.argv[2])
r.lifetime = 30  # a loaded CI machine answers slowly; a timeout would read as a failed signature
def dnsfunc(name, timeout=5):
    try:
        answer = r.resolve(name.decode().rstrip('.'), 'TXT')
    except Exception:
        return None
    return b''.join(answer[0].strings)
msg = sys.stdin.buffer.read()
n = sum(1 for line in msg.split(b'\\n') if line.lower().startswith(b'dkim-signature:'))
d = dkim.DKIM(msg)
print(json.dumps([bool(d.verify(idx=i, dnsfunc=dnsfunc)) for i in range(n)]))
`;
  const r = await runAsync(python3(), ['-c', script, dns.host, String(dns.port)], fs.readFileSync(file));
  assert.equal(r.code, 0, `dkimpy: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

/** Mail::DKIM's result per signature ("s1 pass"), the keys fetched from the test DNS server. */
export async function mailDkimVerify(file: string, dns: TestDnsServer): Promise<string[]> {
  const script = `
use strict; use warnings;
use Mail::DKIM::Verifier; use Net::DNS;
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(nameservers => [$ARGV[0]], port => $ARGV[1], recurse => 0, udp_timeout => 5));
my $v = Mail::DKIM::Verifier->new();
while (<STDIN>) { s/\\r?\\n$/\\r\\n/; $v->PRINT($_); }
$v->CLOSE;
print join(",", map { $_->selector . " " . $_->result } $v->signatures), "\\n";
`;
  const r = await runAsync(requireTool('perl'), ['-e', script, dns.host, String(dns.port)], fs.readFileSync(file));
  assert.equal(r.code, 0, `Mail::DKIM (libmail-dkim-perl): ${r.stderr}`);
  return r.stdout.trim().split(',').filter(Boolean);
}
