/**
 * Fixtures for the outbound TLS policy tests: a test CA and certificates made
 * with openssl, a STARTTLS receiver (smtp-server) that records what it got, and
 * a DNSSEC lab on loopback: zones signed with ldns-signzone, served by nsd,
 * behind unbound as the validating resolver with the zones' trust anchors.
 * Everything runs from its own config files in a temp dir; no system config.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { X509Certificate, createHash } from 'node:crypto';
import { spawn, ChildProcess } from 'node:child_process';
import { SMTPServer } from 'smtp-server';
import { run, requireTool, tempDir, waitFor, freePort } from './harness.js';

function openssl(args: string[], cwd: string): void {
  const r = run(requireTool('openssl'), args, { cwd });
  if (r.code !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

export interface KeyPair { key: string; cert: string; certFile: string; keyFile: string }

/** A CA that can issue server certificates for DNS names. */
export class TestCa {
  readonly dir = tempDir('test-ca');
  readonly certFile = path.join(this.dir, 'ca.pem');
  constructor() {
    openssl(['req', '-x509', ...EC, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=Postern Test CA',
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], this.dir);
  }
  get pem(): string { return fs.readFileSync(this.certFile, 'utf8'); }

  /** A certificate for `names` (the first is the CN), signed by this CA; `withChain` appends the CA certificate. */
  issue(names: string[], withChain = false): KeyPair {
    const base = names[0].replace(/[^a-z0-9.-]/gi, '_');
    fs.writeFileSync(path.join(this.dir, `${base}.ext`),
      `subjectAltName=${names.map((n) => `DNS:${n}`).join(',')}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n`);
    openssl(['req', ...EC, '-keyout', `${base}.key`, '-out', `${base}.csr`, '-subj', `/CN=${names[0]}`], this.dir);
    openssl(['x509', '-req', '-in', `${base}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${base}.pem`,
      '-days', '2', '-extfile', `${base}.ext`], this.dir);
    const certFile = path.join(this.dir, `${base}.pem`);
    if (withChain) fs.appendFileSync(certFile, this.pem);
    return { key: fs.readFileSync(path.join(this.dir, `${base}.key`), 'utf8'), cert: fs.readFileSync(certFile, 'utf8'), certFile, keyFile: path.join(this.dir, `${base}.key`) };
  }
}

/** A self-signed certificate for `name` (no CA vouches for it). */
export function selfSigned(name: string): KeyPair {
  const dir = tempDir('self-signed');
  openssl(['req', '-x509', ...EC, '-keyout', 'key.pem', '-out', 'cert.pem', '-days', '2', '-subj', `/CN=${name}`,
    '-addext', `subjectAltName=DNS:${name}`], dir);
  return { key: fs.readFileSync(path.join(dir, 'key.pem'), 'utf8'), cert: fs.readFileSync(path.join(dir, 'cert.pem'), 'utf8'),
    certFile: path.join(dir, 'cert.pem'), keyFile: path.join(dir, 'key.pem') };
}

/** TLSA association data: selector 1 (SPKI) or 0 (whole certificate), SHA-256, of the first certificate in `pem`. */
export function tlsaSha256(pem: string, selector: 0 | 1): string {
  const c = new X509Certificate(pem);
  const data = selector === 0 ? c.raw : c.publicKey.export({ type: 'spki', format: 'der' });
  return createHash('sha256').update(data).digest('hex');
}

/** A receiving SMTP server offering STARTTLS with the given certificate. */
export class TlsSink {
  readonly messages: { text: string; secure: boolean }[] = [];
  private server: SMTPServer;
  constructor(readonly host: string, readonly port: number, pair: KeyPair) {
    this.server = new SMTPServer({
      key: pair.key, cert: pair.cert, authOptional: true, disabledCommands: ['AUTH'], logger: false,
      onData: (stream: any, session: any, cb: () => void) => {
        const chunks: Buffer[] = [];
        stream.on('data', (c: Buffer) => chunks.push(c));
        stream.on('end', () => { this.messages.push({ text: Buffer.concat(chunks).toString('utf8'), secure: !!session.secure }); cb(); });
      },
    } as any);
    this.server.on('error', () => undefined); // a refused handshake must not end the test process
  }
  async start(): Promise<this> {
    await new Promise<void>((r) => this.server.listen(this.port, this.host, () => r()));
    return this;
  }
  got(subject: string): { text: string; secure: boolean } | undefined {
    return this.messages.find((m) => m.text.includes(`Subject: ${subject}`));
  }
  async stop(): Promise<void> { await new Promise<void>((r) => this.server.close(() => r())); }
}

// ------------------------------------------------------------ DNSSEC lab

export interface LabZone {
  name: string;
  /** Zone file lines after the SOA and NS (owner names relative or absolute). */
  records: string[];
  signed: boolean;
  /** Change the signed zone after signing, so its signatures no longer match (a bogus zone). */
  corrupt?: (signedText: string) => string;
}

function daemon(cmd: string, args: string[], logFile: string): ChildProcess {
  const out = fs.openSync(logFile, 'a');
  return spawn(cmd, args, { stdio: ['ignore', out, out] });
}

async function stop(p: ChildProcess | undefined): Promise<void> {
  if (!p || p.exitCode !== null || p.signalCode !== null) return;
  p.kill('SIGTERM');
  await Promise.race([new Promise((r) => p.once('exit', r)), new Promise((r) => setTimeout(r, 5000))]);
  if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
}

/** nsd serving the zones, unbound validating them (trust anchors: the signed zones' DS records). */
export class DnssecLab {
  readonly dir = tempDir('dnssec-lab');
  private nsd?: ChildProcess;
  private unbound?: ChildProcess;
  nsdPort = 0;
  resolverPort = 0;
  constructor(readonly zones: LabZone[]) {}

  get resolver(): string { return `127.0.0.1:${this.resolverPort}`; }

  async start(): Promise<this> {
    const nsdBin = requireTool('nsd');
    const unboundBin = requireTool('unbound');
    const keygen = requireTool('ldns-keygen');
    const signzone = requireTool('ldns-signzone');
    this.nsdPort = await freePort();
    this.resolverPort = await freePort();
    const anchors: string[] = [];
    const nsdZones: string[] = [];
    for (const z of this.zones) {
      const file = path.join(this.dir, `${z.name}.zone`);
      fs.writeFileSync(file, [`$ORIGIN ${z.name}.`, '$TTL 300',
        `@ IN SOA ns.${z.name}. hostmaster.${z.name}. 1 3600 600 86400 60`, `@ IN NS ns.${z.name}.`, `ns IN A 127.0.0.1`,
        ...z.records, ''].join('\n'));
      let served = file;
      if (z.signed) {
        const k = run(keygen, ['-a', 'ECDSAP256SHA256', '-k', z.name], { cwd: this.dir });
        if (k.code !== 0) throw new Error(`ldns-keygen: ${k.stderr}`);
        const base = k.stdout.trim();
        const s = run(signzone, ['-o', `${z.name}.`, file, base], { cwd: this.dir });
        if (s.code !== 0) throw new Error(`ldns-signzone ${z.name}: ${s.stderr}`);
        served = `${file}.signed`;
        if (z.corrupt) fs.writeFileSync(served, z.corrupt(fs.readFileSync(served, 'utf8')));
        anchors.push(path.join(this.dir, `${base}.ds`));
      }
      nsdZones.push(`zone:\n  name: "${z.name}"\n  zonefile: "${served}"\n`);
    }
    fs.writeFileSync(path.join(this.dir, 'nsd.conf'), [
      'server:', `  ip-address: 127.0.0.1@${this.nsdPort}`, `  port: ${this.nsdPort}`, '  do-ip6: no', '  username: ""', '  chroot: ""',
      `  zonesdir: "${this.dir}"`, '  database: ""', `  zonelistfile: "${this.dir}/zone.list"`, `  pidfile: "${this.dir}/nsd.pid"`,
      `  xfrdfile: "${this.dir}/xfrd.state"`, `  xfrdir: "${this.dir}"`, `  logfile: "${this.dir}/nsd.log"`, '  server-count: 1',
      'remote-control:', '  control-enable: no', ...nsdZones].join('\n') + '\n');
    fs.writeFileSync(path.join(this.dir, 'unbound.conf'), [
      'server:', `  interface: 127.0.0.1@${this.resolverPort}`, `  port: ${this.resolverPort}`, '  do-ip6: no', '  do-daemonize: no',
      '  username: ""', '  chroot: ""', `  directory: "${this.dir}"`, `  pidfile: "${this.dir}/unbound.pid"`, '  use-syslog: no',
      `  logfile: "${this.dir}/unbound.log"`, '  verbosity: 1', '  num-threads: 1', '  access-control: 127.0.0.0/8 allow',
      '  do-not-query-localhost: no', '  module-config: "validator iterator"', '  qname-minimisation: no',
      '  val-log-level: 2', '  cache-max-ttl: 5', '  cache-max-negative-ttl: 5',
      // test. is a special-use name (RFC 6761) unbound answers NXDOMAIN for unless told otherwise
      '  local-zone: "test." nodefault',
      ...anchors.map((a) => `  trust-anchor-file: "${a}"`),
      'remote-control:', '  control-enable: no',
      ...this.zones.map((z) => `stub-zone:\n  name: "${z.name}"\n  stub-addr: 127.0.0.1@${this.nsdPort}`)].join('\n') + '\n');
    const chk = run(requireTool('unbound-checkconf'), [path.join(this.dir, 'unbound.conf')]);
    if (chk.code !== 0) throw new Error(`unbound-checkconf: ${chk.stdout}${chk.stderr}`);
    this.nsd = daemon(nsdBin, ['-d', '-c', path.join(this.dir, 'nsd.conf')], path.join(this.dir, 'nsd.out'));
    this.unbound = daemon(unboundBin, ['-d', '-c', path.join(this.dir, 'unbound.conf')], path.join(this.dir, 'unbound.out'));
    const listening = (port: number) => run('ss', ['-lun', `sport = :${port}`]).stdout.includes(`127.0.0.1:${port}`);
    await waitFor('nsd and unbound listening', () => listening(this.nsdPort) && listening(this.resolverPort), 15000);
    return this;
  }

  log(): string {
    return ['nsd.log', 'nsd.out', 'unbound.log', 'unbound.out'].map((f) => {
      try { return `--- ${f}\n${fs.readFileSync(path.join(this.dir, f), 'utf8')}`; } catch { return ''; }
    }).join('\n');
  }

  async stop(): Promise<void> {
    await stop(this.unbound);
    await stop(this.nsd);
    if (!process.env.KEEP) fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

