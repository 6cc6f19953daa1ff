/**
 * `postern check` (postfix check): read everything the services will read and
 * say what is wrong before they do. main.cf, master.cf, every lookup table a
 * parameter names, the TLS certificate and key, the DKIM signing table and its
 * keys, the spool and the mailbox tree. It reports and changes nothing
 * (`postern queue check` repairs the spool). Each complaint names the file and,
 * where it is about one line, the line: `FILE:LINE: error: problem`.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { X509Certificate, createPrivateKey, KeyObject } from 'node:crypto';
import { Command } from 'commander';
import {
  MainConfig, ConfigError, MasterEntry, loadMasterCf, PARAMETERS, paramSpec, checkRestrictionLists, masterCfLocation, metricsListenAddress,
  parseTexthash, parsePasswdFile, parseSqlCf, tableTypes, readDkimTable, Spool, spoolDifferences, serviceAccounts, ServiceAccounts,
  lookupSystemUser, SystemUser, isRoot, accessAs, serviceAccessProblems,
} from '@postern/common';

export interface Complaint {
  level: 'error' | 'warning';
  file: string;
  /** 0 when the complaint is about the file as a whole. */
  line: number;
  problem: string;
}

export function formatComplaint(c: Complaint): string {
  return `${c.file}${c.line > 0 ? `:${c.line}` : ''}: ${c.level}: ${c.problem}`;
}

/** Where a setting was made: main.cf's line, or the master.cf line of a `-o` override. */
interface Location { file: string; line: number }

/** A certificate expiring sooner than this gets a warning. */
const EXPIRY_WARNING_DAYS = 30;

/** Lookup table types the services can open (packages/common/src/lookup.ts, users.ts). */

class Report {
  readonly complaints: Complaint[] = [];
  private seen = new Set<string>();

  add(level: Complaint['level'], file: string, line: number, problem: string): void {
    const key = `${level}\0${file}\0${line}\0${problem}`;
    if (this.seen.has(key)) return; // e.g. one main.cf mistake seen through several master.cf services
    this.seen.add(key);
    this.complaints.push({ level, file, line, problem });
  }
  error(at: Location, problem: string): void { this.add('error', at.file, at.line, problem); }
  warning(at: Location, problem: string): void { this.add('warning', at.file, at.line, problem); }

  /** `name:LINE: problem` from a parser that names the file by its base name, put back under `file`. */
  fromMessage(level: Complaint['level'], file: string, message: string): void {
    const m = /^[^:\n]*:(\d+): ([\s\S]*)$/.exec(message);
    if (m && (message.startsWith(`${path.basename(file)}:`) || message.startsWith(`${file}:`))) {
      this.add(level, file, parseInt(m[1], 10), m[2]);
    } else {
      this.add(level, file, 0, message);
    }
  }

  fromConfigError(e: ConfigError): void {
    const prefix = `${path.basename(e.file)}:${e.line}: `;
    this.add('error', e.file, e.line, e.message.startsWith(prefix) ? e.message.slice(prefix.length) : e.message);
  }
}

/** Unix permission check for one account (services run with their primary group only: libuv drops the rest). */
function permits(st: fs.Stats, who: SystemUser, bit: 4 | 2 | 1): boolean {
  if (who.uid === 0) return bit !== 1 || st.isDirectory() || (st.mode & 0o111) !== 0;
  if (st.uid === who.uid) return ((st.mode >> 6) & bit) !== 0;
  if (st.gid === who.gid) return ((st.mode >> 3) & bit) !== 0;
  return (st.mode & bit) !== 0;
}

/** Why `who` cannot reach `file` with `bit` (4 read, 2 write), or null; every directory on the way is checked. */
function accessProblem(file: string, who: SystemUser, bit: 4 | 2): string | null {
  // as root, ask the kernel as that account: ACLs (the users file's, for local) count too
  if (isRoot()) return accessAs(who, [{ path: file, want: bit === 4 ? 'read' : 'write' }])[0];
  let real: string;
  try { real = fs.realpathSync(file); } catch (e) { return `cannot resolve: ${(e as Error).message}`; }
  const parts = real.split('/').filter(Boolean);
  let dir = '/';
  for (let i = 0; i < parts.length; i++) {
    const st = fs.statSync(dir);
    if (!permits(st, who, 1)) return `${who.name} cannot enter ${dir}`;
    dir = path.join(dir, parts[i]);
  }
  if (!permits(fs.statSync(real), who, bit)) return `${who.name} cannot ${bit === 4 ? 'read' : 'write'} it`;
  return null;
}

function readOrNull(file: string, report: Report, at: Location, what: string, missing: 'error' | 'warning' | 'ignore' = 'error'): Buffer | null {
  try { return fs.readFileSync(file); } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      if (missing !== 'ignore') report.add(missing, at.file, at.line, `${what} ${file} does not exist`);
    } else if (code === 'EACCES') {
      report.error(at, `${what} ${file} is not readable by ${process.env.USER || `uid ${process.getuid?.()}`} (run postern check as root)`);
    } else {
      report.error(at, `${what} ${file}: ${(e as Error).message}`);
    }
    return null;
  }
}

/** Accounts the services will run as; null (after complaining) when one does not exist. */
function accountsOf(config: MainConfig, report: Report): ServiceAccounts | null {
  // a sandbox runs everything as whoever starts master: the same as whoever runs this check
  if (config.bool('unprivileged')) return serviceAccounts(config);
  const get = (param: string): SystemUser | null => {
    const u = lookupSystemUser(config.get(param));
    if (!u) report.error({ file: config.file, line: config.lineOf(param) }, `${param}: user "${config.get(param)}" does not exist (the package's postinst creates it; or "postern init DIR --create-users")`);
    return u;
  };
  const owner = get('mail_owner'), smtpd = get('smtpd_user'), relay = get('relay_user'), mailbox = get('mailbox_user');
  if (!owner || !smtpd || !relay || !mailbox) return null;
  return { owner, smtpd, relay, mailbox, privileged: true };
}

/** One configuration view per place a service reads it: main.cf, and each master.cf entry with its -o overrides. */
interface View { config: MainConfig; entry: MasterEntry | null; where: (name: string) => Location }

function viewsOf(config: MainConfig, entries: MasterEntry[], configDir: string): View[] {
  const main = (name: string): Location => ({ file: config.file, line: config.lineOf(name) });
  return [
    { config, entry: null, where: main },
    ...entries.map((e): View => ({
      config: config.withOverrides(e.overrides),
      entry: e,
      where: (name) => (e.overrides.has(name) ? masterCfLocation(configDir, e.line) : main(name)),
    })),
  ];
}

function checkMainCf(configDir: string, report: Report): MainConfig | null {
  const problems: ConfigError[] = [];
  let config: MainConfig;
  try { config = MainConfig.load(configDir, problems); } catch (e) {
    if (e instanceof ConfigError) { report.fromConfigError(e); return null; }
    throw e;
  }
  for (const p of problems) report.fromConfigError(p);
  try { metricsListenAddress(config); } catch (e) { if (e instanceof ConfigError) report.fromConfigError(e); else throw e; }
  for (const w of config.warnings) report.fromMessage('warning', config.file, w);
  for (const [name, value] of config.explicit()) {
    const at = { file: config.file, line: config.lineOf(name) };
    // Postfix expands an unknown $name to nothing: almost always a typo
    for (const m of value.matchAll(/\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))/g)) {
      const ref = m[1] ?? m[2];
      if (!paramSpec(ref) && !config.isSet(ref)) report.warning(at, `${name}: $${ref} is not a parameter (it expands to nothing)`);
    }
    // loops through names the table does not know are not caught by the parser's value checks
    try { config.get(name); } catch (e) { if (e instanceof ConfigError) report.fromConfigError(e); else throw e; }
  }
  return config;
}

function checkMasterCf(configDir: string, config: MainConfig, accounts: ServiceAccounts | null, report: Report): MasterEntry[] {
  const problems: ConfigError[] = [];
  let entries: MasterEntry[];
  try { entries = loadMasterCf(configDir, problems); } catch (e) {
    if (e instanceof ConfigError) { report.fromConfigError(e); return []; }
    throw e;
  }
  for (const p of problems) report.fromConfigError(p);
  // an instance made before the metrics service existed has no line for it
  if (config.get('metrics_listen').trim() && !entries.some((e) => e.command === 'metrics')) {
    report.warning({ file: config.file, line: config.lineOf('metrics_listen') }, 'metrics_listen is set, but master.cf has no metrics service: add "metrics unix - 1 metrics"');
  }
  for (const e of entries) {
    const at = masterCfLocation(configDir, e.line);
    if (accounts?.privileged && e.user !== '-' && !lookupSystemUser(e.user)) report.error(at, `user "${e.user}" does not exist`);
    if (e.command === 'smtpd') {
      try {
        checkRestrictionLists(config.withOverrides(e.overrides), (name) => (e.overrides.has(name) ? at : undefined));
      } catch (err) { if (err instanceof ConfigError) report.fromConfigError(err); else throw err; }
    }
  }
  return entries;
}

/** Every `type:source` table any parameter (or one of `only`) names, restriction lists included, checked once each. */
function checkTables(views: View[], accounts: ServiceAccounts | null, report: Report, only?: string[], entries?: MasterEntry[]): void {
  const done = new Set<string>();
  for (const v of views) {
    for (const p of PARAMETERS) {
      if (only && !only.includes(p.name)) continue;
      let value: string;
      try { value = v.config.get(p.name); } catch { continue; } // reported with main.cf
      for (const token of value.split(/[\s,]+/)) {
        const m = /^([a-z][a-z0-9-]*):(.+)$/.exec(token.replace(/^proxy:/, '')); // proxy:TYPE:SOURCE is TYPE:SOURCE
        if (!m) continue;
        const at = v.where(p.name);
        if (!tableTypes().includes(m[1])) {
          if (p.name.endsWith('_maps')) report.error(at, `${p.name}: unsupported table type "${m[1]}" (${tableTypes().join(', ')})`);
          continue;
        }
        if (done.has(token)) continue;
        done.add(token);
        if (!path.isAbsolute(m[2])) { report.error(at, `${p.name}: ${token}: the file must be an absolute path`); continue; }
        if (m[1] === 'texthash') checkTexthash(m[2], p.name, at, report);
        else if (m[1] === 'passwd-file') checkPasswdFile(m[2], p.name, at, accounts, report);
        else if (m[1] === 'pgsql' || m[1] === 'sqlite') {
          checkSqlCf(m[2], p.name, at, report);
          // every service reads these through proxymap: without it they only ever answer 4xx
          if (entries && !entries.some((e) => e.command === 'proxymap')) {
            report.error(at, `${p.name}: ${m[1]}: tables are read through the proxymap service, which master.cf does not run (add "proxymap unix - - 1 proxymap")`);
          }
        }
      }
    }
  }
}

function checkTexthash(file: string, param: string, at: Location, report: Report): void {
  const text = readOrNull(file, report, at, `${param}: table`);
  if (text === null) return;
  try { parseTexthash(text.toString('utf8'), file); } catch (e) { report.fromMessage('error', file, (e as Error).message); }
  if (param === 'smtp_sasl_password_maps' && (fs.statSync(file).mode & 0o004)) {
    report.warning({ file, line: 0 }, 'holds passwords but every user can read it (chmod o-r)');
  }
}

/** A pgsql:/sqlite: parameter file (docs/tables.md): its syntax, and who can read the database password. */
function checkSqlCf(file: string, param: string, at: Location, report: Report): void {
  const text = readOrNull(file, report, at, `${param}: table`);
  if (text === null) return;
  try { parseSqlCf(text.toString('utf8'), file); } catch (e) { report.fromMessage('error', file, (e as Error).message); }
  if (fs.statSync(file).mode & 0o004) report.warning({ file, line: 0 }, 'holds the database login but every user can read it (chown root:postern, chmod 640: only proxymap reads it)');
}

function checkPasswdFile(file: string, param: string, at: Location, accounts: ServiceAccounts | null, report: Report): void {
  // the services treat a missing users file as an empty one
  const text = readOrNull(file, report, at, `${param}: users file`, 'warning');
  if (text === null) return;
  try { parsePasswdFile(text.toString('utf8'), file); } catch (e) { report.fromMessage('error', file, (e as Error).message); }
  const st = fs.statSync(file);
  if (st.mode & 0o004) report.warning({ file, line: 0 }, 'holds password hashes but every user can read it (chmod o-r; "postern setup" sets the owners)');
  if (accounts?.privileged && st.uid !== 0) {
    report.error({ file, line: 0 }, `owned by ${lookupSystemUser(st.uid)?.name ?? st.uid}: only root may own the users file (whoever can write it can add a login); "postern setup" sets the owners`);
  }
  if (accounts?.privileged) {
    // smtpd checks recipients and AUTH against it; local finds mailboxes in it
    for (const who of [accounts.smtpd, accounts.mailbox]) {
      const problem = accessProblem(file, who, 4);
      if (problem) report.error({ file, line: 0 }, `${problem} ("postern setup" sets the owners)`);
    }
  }
}

/** The certificate and key of each smtpd listener (main.cf's, or its own through -o). */
function checkTls(views: View[], accounts: ServiceAccounts | null, report: Report, now: Date): void {
  const checked = new Set<string>();
  for (const v of views) {
    if (v.entry?.command !== 'smtpd') continue;
    const c = v.config;
    const wrapper = c.bool('smtpd_tls_wrappermode');
    if (c.get('smtpd_tls_security_level') === 'none' && !wrapper) continue;
    // smtpd refuses to start such a listener without a certificate (AUTH is offered only over TLS)
    const required = wrapper || c.get('smtpd_tls_security_level') === 'encrypt' || c.bool('smtpd_sasl_auth_enable');
    const certFile = c.get('smtpd_tls_cert_file');
    const keyFile = c.get('smtpd_tls_key_file');
    const certAt = v.where('smtpd_tls_cert_file');
    const keyAt = v.where('smtpd_tls_key_file');
    if (!fs.existsSync(certFile)) {
      if (required) report.error(certAt, `smtpd_tls_cert_file: ${certFile} does not exist, and the ${v.entry.service} listener needs TLS`);
      else report.warning(certAt, `smtpd_tls_cert_file: ${certFile} does not exist: STARTTLS is not offered`);
      continue;
    }
    const pair = `${certFile}\0${keyFile}`;
    if (checked.has(pair)) continue;
    checked.add(pair);
    const certPem = readOrNull(certFile, report, certAt, 'smtpd_tls_cert_file: certificate');
    const keyPem = readOrNull(keyFile, report, keyAt, 'smtpd_tls_key_file: private key');
    let cert: X509Certificate | null = null;
    let key: KeyObject | null = null;
    if (certPem) {
      try { cert = new X509Certificate(certPem); } catch (e) {
        report.error(certAt, `smtpd_tls_cert_file: ${certFile} is not a PEM certificate (${(e as Error).message})`);
      }
    }
    if (keyPem) {
      try { key = createPrivateKey(keyPem); } catch (e) {
        report.error(keyAt, `smtpd_tls_key_file: ${keyFile} is not a PEM private key (${(e as Error).message})`);
      }
      if (fs.statSync(keyFile).mode & 0o004) report.warning({ file: keyFile, line: 0 }, 'private key readable by every user (chmod o-r)');
      if (accounts?.privileged) {
        const problem = accessProblem(keyFile, accounts.smtpd, 4);
        if (problem) report.error(keyAt, `smtpd_tls_key_file: ${keyFile}: ${problem} ("postern setup" sets the owners)`);
      }
    }
    if (cert && key && !cert.checkPrivateKey(key)) {
      report.error(keyAt, `smtpd_tls_key_file: ${keyFile} does not match the certificate in ${certFile}`);
    }
    if (cert) {
      const notAfter = new Date(cert.validTo);
      const notBefore = new Date(cert.validFrom);
      const certWhere = { file: certFile, line: 0 };
      if (notAfter < now) report.warning(certWhere, `certificate expired on ${notAfter.toISOString().slice(0, 10)}`);
      else if (notAfter.getTime() - now.getTime() < EXPIRY_WARNING_DAYS * 86400000) {
        report.warning(certWhere, `certificate expires on ${notAfter.toISOString().slice(0, 10)}`);
      }
      if (notBefore > now) report.warning(certWhere, `certificate is not valid before ${notBefore.toISOString().slice(0, 10)}`);
      const host = c.get('myhostname');
      if (!cert.checkHost(host)) report.warning(certWhere, `certificate is not for myhostname (${host}): ${cert.subject.replace(/\n/g, ', ')}`);
    }
  }
}

function checkDkim(config: MainConfig, accounts: ServiceAccounts | null, report: Report): void {
  const tableFile = config.get('dkim_signing_table');
  const at = { file: config.file, line: config.lineOf('dkim_signing_table') };
  // a type:source table (a database) is checked with the other tables; its rows are data, not configuration
  if (/^[a-z][a-z0-9-]*:/.test(tableFile)) return;
  let table: ReturnType<typeof readDkimTable>;
  try { table = readDkimTable(tableFile); } catch (e) { report.error(at, `dkim_signing_table: ${(e as Error).message}`); return; }
  for (const err of table.errors) report.fromMessage('error', tableFile, err);
  for (const e of table.entries) {
    const row = { file: tableFile, line: e.line };
    const pem = readOrNull(e.keyFile, report, row, 'key file');
    if (!pem) continue;
    let key: KeyObject;
    try { key = createPrivateKey(pem); } catch (err) {
      report.error(row, `key file ${e.keyFile} is not a PEM private key (${(err as Error).message})`);
      continue;
    }
    const type = key.asymmetricKeyType === 'rsa' ? 'rsa-sha256' : key.asymmetricKeyType === 'ed25519' ? 'ed25519-sha256' : null;
    if (!type) report.error(row, `key file ${e.keyFile} holds a ${key.asymmetricKeyType} key (rsa or ed25519)`);
    else if (e.algorithm && e.algorithm !== type) report.error(row, `key file ${e.keyFile} holds a ${key.asymmetricKeyType} key, the table says ${e.algorithm}`);
    if (accounts?.privileged) {
      const problem = accessProblem(e.keyFile, accounts.owner, 4); // cleanup signs
      if (problem) report.error(row, `key file ${e.keyFile}: ${problem}`);
    }
  }
}

function checkSpool(config: MainConfig, accounts: ServiceAccounts, report: Report): void {
  const root = config.get('queue_directory');
  const at = { file: config.file, line: config.lineOf('queue_directory') };
  if (!fs.existsSync(root)) {
    report.warning(at, `queue_directory: ${root} does not exist (master creates it at start; "postern setup" now)`);
    return;
  }
  const differences = spoolDifferences(new Spool(root), accounts);
  if (differences.length > 1 && differences.every((d) => d.missing || d.path === root)) {
    report.warning(at, `queue_directory: ${root} is not set up yet (master creates it at start; "postern setup" now)`);
    return;
  }
  for (const d of differences) {
    // master makes a missing directory at start; anything else someone changed ("postern queue check" puts it back)
    if (d.missing) report.warning({ file: d.path, line: 0 }, 'missing (master creates it at start)');
    else report.error({ file: d.path, line: 0 }, `${d.problem} ("postern queue check" fixes it)`);
  }
}

function checkMailRoot(config: MainConfig, accounts: ServiceAccounts, report: Report): void {
  const base = config.get('virtual_mailbox_base');
  const at = { file: config.file, line: config.lineOf('virtual_mailbox_base') };
  if (!fs.existsSync(base)) {
    report.warning(at, `virtual_mailbox_base: ${base} does not exist (master creates it at start)`);
    return;
  }
  if (!fs.statSync(base).isDirectory()) { report.error(at, `virtual_mailbox_base: ${base} is not a directory`); return; }
  if (accounts.privileged) {
    const problem = accessProblem(base, accounts.mailbox, 2);
    if (problem) report.error(at, `virtual_mailbox_base: ${base}: ${problem}; local cannot create mailboxes`);
  }
}

/** authorized_submit_users: static:anyone or login names; any other table lets nobody submit (pickup fails closed). */
function checkSubmitUsers(config: MainConfig, report: Report): void {
  for (const item of config.list('authorized_submit_users')) {
    const pattern = item.replace(/^!/, '');
    if (pattern !== 'static:anyone' && /^[a-z0-9_-]+:/.test(pattern)) {
      report.error({ file: config.file, line: config.lineOf('authorized_submit_users') },
        `authorized_submit_users: "${pattern}" is not supported (static:anyone or login names); as it is, nobody may submit mail`);
    }
  }
}

function checkLogFile(config: MainConfig, report: Report): void {
  const file = config.get('maillog_file');
  if (!file) return;
  const dir = path.dirname(file);
  if (!fs.existsSync(dir)) report.error({ file: config.file, line: config.lineOf('maillog_file') }, `maillog_file: directory ${dir} does not exist`);
}

/** Everything `postern check` finds, in the order it looks. */
export function checkInstance(configDir: string, now = new Date()): Complaint[] {
  const report = new Report();
  const section = (what: string, at: Location, fn: () => void): void => {
    try { fn(); } catch (e) { report.error(at, `${what}: ${(e as Error).message}`); }
  };
  const config = checkMainCf(configDir, report);
  if (!config) return report.complaints;
  const mainAt = { file: config.file, line: 0 };
  let accounts: ServiceAccounts | null = null;
  section('accounts', mainAt, () => { accounts = accountsOf(config, report); });
  let entries: MasterEntry[] = [];
  section('master.cf', { file: path.join(configDir, 'master.cf'), line: 0 }, () => { entries = checkMasterCf(configDir, config, accounts, report); });
  const views = viewsOf(config, entries, configDir);
  if (accounts) {
    const a: ServiceAccounts = accounts;
    // a service that cannot read main.cf or reach the spool dies at every start
    section('service accounts', mainAt, () => {
      for (const p of serviceAccessProblems(configDir, config, entries, a)) report.error(mainAt, p);
    });
  }
  section('lookup tables', mainAt, () => checkTables(views, accounts, report, undefined, entries));
  section('TLS', mainAt, () => checkTls(views, accounts, report, now));
  section('DKIM', mainAt, () => checkDkim(config, accounts, report));
  if (accounts) {
    const a: ServiceAccounts = accounts;
    section('spool', mainAt, () => checkSpool(config, a, report));
    section('mail root', mainAt, () => checkMailRoot(config, a, report));
  }
  section('authorized_submit_users', mainAt, () => checkSubmitUsers(config, report));
  section('log', mainAt, () => checkLogFile(config, report));
  return report.complaints;
}

/**
 * newaliases: Postern's alias tables are text that cleanup and smtpd re-read
 * when it changes, so there is no database to rebuild; what is left to do is
 * to say whether the tables parse.
 */
export function checkAliasTables(configDir: string): Complaint[] {
  const report = new Report();
  let config: MainConfig;
  try { config = MainConfig.load(configDir); } catch (e) {
    if (e instanceof ConfigError) { report.fromConfigError(e); return report.complaints; }
    throw e;
  }
  checkTables(viewsOf(config, [], configDir), null, report, ['alias_maps', 'virtual_alias_maps']);
  return report.complaints;
}

export function addCheckCommand(program: Command, configDir: () => string, setExitCode: (code: number) => void): void {
  program.command('check').description('check main.cf, master.cf, lookup tables, TLS and DKIM keys, spool and mail root (changes nothing)')
    .option('--json', 'one JSON object per complaint on standard output')
    .action((o) => {
      const complaints = checkInstance(configDir());
      for (const c of complaints) {
        if (o.json) console.log(JSON.stringify(c));
        else process.stderr.write(`${formatComplaint(c)}\n`);
      }
      const errors = complaints.filter((c) => c.level === 'error').length;
      if (complaints.length && !o.json) {
        process.stderr.write(`postern check: ${errors} error(s), ${complaints.length - errors} warning(s)\n`);
      }
      setExitCode(errors ? 1 : 0);
    });
}
