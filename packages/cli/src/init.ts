/** `postern init DIR`: a complete, runnable instance rooted at DIR. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { isRoot, createSystemUser, lookupSystemUser, MainConfig, serviceAccounts, userTableFile, secureUsersFile } from '@postern/common';

export interface InitOptions {
  hostname?: string;
  domain?: string;
  smtpPort?: string;
  submissionPort?: string;
  submissionsPort?: string;
  unprivileged?: boolean;
  createUsers?: boolean;
}

export const SERVICE_ACCOUNTS = ['postern', 'postern-smtpd', 'postern-relay', 'vmail'];

/** Where an instance keeps its files: an `init` directory or the system install. */
export interface InstancePaths { configDir: string; queueDir: string; mailRoot: string; logFile: string }

/** The Debian package's layout (FHS); its main.cf names these explicitly. */
export const SYSTEM_PATHS: InstancePaths = {
  configDir: '/etc/postern',
  queueDir: '/var/spool/postern',
  mailRoot: '/var/mail/vhosts',
  // a directory of its own, so the systemd unit can grant write access to it alone
  logFile: '/var/log/postern/postern.log',
};

export const SYSTEM_PORTS = { smtp: 25, submission: 587, submissions: 465 };

/**
 * main.cf as `postern init` and the package write it. Without a host name
 * (the package: it is built once for every host) the identity lines are left
 * commented out for the administrator, and myhostname keeps its default.
 */
export function defaultMainCf(p: InstancePaths, identity: { hostname: string; domain: string } | null, sandbox: boolean): string {
  const id = identity
    ? `myhostname = ${identity.hostname}
mydomain = ${identity.domain}
mydestination = $myhostname, localhost.$mydomain, localhost, $mydomain`
    : `# This host's name as the world sees it (its MX target, its PTR), and its mail domain:
#   postern config set myhostname=mx.example.org mydomain=example.org
#myhostname = mx.example.org
#mydomain = example.org
mydestination = $myhostname, localhost.$mydomain, localhost`;
  return `# Postern main.cf${identity ? ', written by "postern init"' : ''}. Parameter reference: docs/parameters.md
# Change values with "postern${p.configDir === SYSTEM_PATHS.configDir ? '' : ` -c ${p.configDir}`} config set name=value";
# check the result with "postern check".

config_directory = ${p.configDir}
queue_directory = ${p.queueDir}
virtual_mailbox_base = ${p.mailRoot}
maillog_file = ${p.logFile}

${id}
mynetworks = 127.0.0.0/8, [::1]/128
virtual_mailbox_maps = passwd-file:$config_directory/users

smtpd_tls_cert_file = $config_directory/tls/cert.pem
smtpd_tls_key_file = $config_directory/tls/key.pem
${sandbox ? `
# A sandbox: every service runs as the user who starts it, on unprivileged ports.
unprivileged = yes
` : ''}`;
}

/** master.cf as `postern init` and the package write it. */
export function defaultMasterCf(ports: { smtp: number; submission: number; submissions: number }, loopbackOnly: boolean): string {
  const at = (p: number) => (loopbackOnly ? `127.0.0.1:${p}` : String(p));
  const rows = [
    [at(ports.smtp), 'inet', '-', '1', 'smtpd'],
    [at(ports.submission), 'inet', '-', '1', 'smtpd', '-o smtpd_tls_security_level=encrypt -o smtpd_sasl_auth_enable=yes'],
    [at(ports.submissions), 'inet', '-', '1', 'smtpd', '-o smtpd_tls_wrappermode=yes -o smtpd_sasl_auth_enable=yes'],
    ['cleanup', 'unix', '-', '1', 'cleanup'],
    ['qmgr', 'unix', '-', '1', 'qmgr'],
    ['smtp', 'unix', '-', '1', 'smtp'],
    ['lmtp', 'unix', '-', '1', 'lmtp'],
    ['local', 'unix', '-', '1', 'local'],
    ['showq', 'unix', '-', '1', 'showq'],
    ['pickup', 'unix', '-', '1', 'pickup'],
    ['anvil', 'unix', '-', '1', 'anvil'],
    ['metrics', 'unix', '-', '1', 'metrics'],
    ['proxymap', 'unix', '-', '1', 'proxymap'],
  ];
  const fmt = (r: string[]) => `${r[0].padEnd(18)}${r[1].padEnd(6)}${r[2].padEnd(6)}${r[3].padEnd(9)}${r.slice(4).join('  ')}`.trimEnd();
  return `# Postern master.cf: one service per line (docs/master.md).
# "user" - means the command's own account (smtpd, anvil: postern-smtpd; cleanup/qmgr/pickup: postern,
# smtp/lmtp: postern-relay, local: vmail); "maxproc" is the number of processes.
# pickup's socket only wakes it (root and the queue owner); it also scans maildrop/ every second.
# metrics (as postern) starts only when main.cf sets metrics_listen; master feeds it the log events.
${fmt(['# service', 'type', 'user', 'maxproc', 'command [-o name=value ...]'])}
${rows.map(fmt).join('\n')}
`;
}

export const DEFAULT_USERS_FILE = '# Postern users (Dovecot passwd-file): manage with "postern user add|del|list"\n';

/** The package's /etc/postern files: the same writers as `postern init`, with the system paths and ports. */
export function systemConfigFiles(): Record<'main.cf' | 'master.cf' | 'users', string> {
  return {
    'main.cf': defaultMainCf(SYSTEM_PATHS, null, false),
    'master.cf': defaultMasterCf(SYSTEM_PORTS, false),
    users: DEFAULT_USERS_FILE,
  };
}

export function makeSelfSignedCertificate(tlsDir: string, hostname: string): void {
  makeSelfSignedPair(path.join(tlsDir, 'cert.pem'), path.join(tlsDir, 'key.pem'), hostname);
}

/** A self-signed certificate and its key at these paths, unless both exist; true when it made them. */
export function makeSelfSignedPair(cert: string, key: string, hostname: string): boolean {
  for (const d of new Set([path.dirname(cert), path.dirname(key)])) fs.mkdirSync(d, { recursive: true, mode: 0o755 });
  if (fs.existsSync(key) && fs.existsSync(cert)) return false;
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '3650', '-subj', `/CN=${hostname}`,
    '-addext', `subjectAltName=DNS:${hostname}`, '-keyout', key, '-out', cert], { stdio: 'pipe' });
  fs.chmodSync(key, 0o640);
  fs.chmodSync(cert, 0o644);
  return true;
}

/**
 * Readable by exactly the services that need them (see docs/security.md): the
 * users file root-owned, smtpd's group, an ACL entry for local; the TLS key
 * root:smtpd's group 0640. Returns what it changed.
 */
export function fixConfigOwnership(configDir: string): string[] {
  const config = MainConfig.load(configDir);
  const a = serviceAccounts(config);
  if (!a.privileged) return [];
  const users = userTableFile(config); // null: the users are not in a file (a database)
  const done = users ? secureUsersFile(users, a) : [];
  const key = config.get('smtpd_tls_key_file');
  if (fs.existsSync(key)) { fs.chownSync(key, 0, a.smtpd.gid); fs.chmodSync(key, 0o640); }
  return done;
}

export function initInstance(dirArg: string, o: InitOptions): string[] {
  const dir = path.resolve(dirArg);
  const privileged = isRoot() && !o.unprivileged;
  const hostname = o.hostname ?? (os.hostname().includes('.') ? os.hostname() : `${os.hostname()}.localdomain`);
  const domain = o.domain ?? (hostname.split('.').slice(1).join('.') || 'localdomain');
  const ports = {
    smtp: parseInt(o.smtpPort ?? (privileged ? '25' : '2525'), 10),
    submission: parseInt(o.submissionPort ?? (privileged ? '587' : '5870'), 10),
    submissions: parseInt(o.submissionsPort ?? (privileged ? '465' : '4650'), 10),
  };
  for (const [k, v] of Object.entries(ports)) if (!(v > 0 && v < 65536)) throw new Error(`--${k}-port: "${v}" is not a port number`);
  const etc = path.join(dir, 'etc');
  if (fs.existsSync(path.join(etc, 'main.cf'))) throw new Error(`${etc}/main.cf already exists; not overwriting an instance`);
  const done: string[] = [];
  if (privileged && o.createUsers) {
    for (const u of SERVICE_ACCOUNTS) {
      if (!lookupSystemUser(u)) { createSystemUser(u, u === 'vmail' ? path.join(dir, 'mail') : '/nonexistent'); done.push(`created system user ${u}`); }
    }
  }
  for (const d of [etc, path.join(dir, 'spool'), path.join(dir, 'mail')]) fs.mkdirSync(d, { recursive: true, mode: 0o755 });
  const paths: InstancePaths = { configDir: etc, queueDir: path.join(dir, 'spool'), mailRoot: path.join(dir, 'mail'), logFile: path.join(dir, 'postern.log') };
  fs.writeFileSync(path.join(etc, 'main.cf'), defaultMainCf(paths, { hostname, domain }, !privileged), { mode: 0o644 });
  fs.writeFileSync(path.join(etc, 'master.cf'), defaultMasterCf(ports, !privileged), { mode: 0o644 });
  fs.writeFileSync(path.join(etc, 'users'), DEFAULT_USERS_FILE, { mode: 0o640 });
  makeSelfSignedCertificate(path.join(etc, 'tls'), hostname);
  if (privileged) fixConfigOwnership(etc);
  done.push(`created instance ${dir} (${privileged ? 'system accounts' : 'sandbox: runs as the invoking user'}; ports ${ports.smtp}/${ports.submission}/${ports.submissions})`);
  return done;
}
