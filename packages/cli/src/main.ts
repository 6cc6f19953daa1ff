#!/usr/bin/env node
/**
 * postern: the administrator's command. Every subcommand takes -c DIR, the
 * configuration directory (default $POSTERN_CONFIG or /etc/postern).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { Command, Option } from 'commander';
import {
  MainConfig, defaultParameters, setMainCfParameters, hashPassword, userDbOf, openUserDbWriter, localDomains, LocalDomains,
  validateMailboxAddress, serviceAccounts, splitAddress, isRoot, secureUsersFileFd, ServiceAccounts,
} from '@postern/common';
import { initInstance, fixConfigOwnership } from './init.js';
import { startMaster, stopMaster, signalMaster, statusReport, abortMaster } from './control.js';
import { listQueue, formatMailq, formatJson } from './queue.js';
import { spoolOf } from './control.js';
import { addDkimCommands } from './dkim.js';
import { addCheckCommand } from './check.js';
import { addSetupCommand } from './setup.js';
import { addMapCommands } from './map.js';
import { addQueueAdminCommands } from './queue-admin.js';
import { showLog } from './log.js';
import { addDnsCommands } from './dns-check.js';
import { addStatsCommand } from './stats.js';
import { addTlsrptCommands } from './tlsrpt.js';

const program = new Command();
program.name('postern').description('Postern mail server control')
  .option('-c, --config <dir>', 'configuration directory', process.env.POSTERN_CONFIG || '/etc/postern')
  .showHelpAfterError();

const configDir = (): string => path.resolve(program.opts().config);
let exitCode = 0;
const fail = (msg: string, code = 1): void => { process.stderr.write(`postern: ${msg}\n`); exitCode = code; };

/** `postern user` edits the user database that virtual_mailbox_maps names, through its backend's writer. */
const userWriter = (config: MainConfig, a: ServiceAccounts) => openUserDbWriter(config.get('virtual_mailbox_maps'), { secure: secureUsers(a) });
/** As root, the rewritten users file gets root's ownership and local's ACL before it replaces the old one. */
const secureUsers = (a: ServiceAccounts) => (a.privileged ? (fd: number) => secureUsersFileFd(fd, a) : undefined);

async function readStdinLine(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8').split(/\r?\n/)[0];
}

/** One line typed at the terminal, not echoed (the password prompt of `user add` and `user passwd`). */
function promptHidden(prompt: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const stdin = process.stdin;
    process.stderr.write(prompt);
    stdin.setRawMode(true);
    stdin.resume();
    let line = '';
    const done = (err?: Error) => {
      stdin.setRawMode(false);
      stdin.pause();
      stdin.off('data', onData);
      process.stderr.write('\n');
      if (err) reject(err); else resolve(line);
    };
    const onData = (b: Buffer) => {
      for (const ch of b.toString('utf8')) {
        if (ch === '\r' || ch === '\n') return done();
        if (ch === '\u0003') return done(new Error('interrupted'));
        if (ch === '\u007f' || ch === '\b') line = line.slice(0, -1);
        else line += ch;
      }
    };
    stdin.on('data', onData);
  });
}

/** The new password: standard input's first line, or asked twice without echo on a terminal. */
async function readNewPassword(fromStdin: boolean): Promise<string> {
  if (fromStdin || !process.stdin.isTTY) return readStdinLine();
  const first = await promptHidden('New password: ');
  if (first !== await promptHidden('Retype new password: ')) throw new Error('the passwords do not match');
  return first;
}

program.command('init <dir>').description('create a complete, runnable instance rooted at DIR')
  .option('--hostname <name>', 'myhostname').option('--domain <domain>', 'mydomain (also a mail domain)')
  .option('--smtp-port <n>', 'MX listener port').option('--submission-port <n>', 'submission (STARTTLS) port')
  .option('--submissions-port <n>', 'submissions (implicit TLS) port')
  .option('--unprivileged', 'run every service as the invoking user, even as root')
  .option('--create-users', 'create missing system accounts (root only)')
  .action((dir, o) => {
    for (const line of initInstance(dir, o)) console.log(`postern: ${line}`);
    console.log(`postern: start it with: postern -c ${path.resolve(dir, 'etc')} start`);
  });

program.command('start').description('start the mail system')
  .option('--foreground', 'stay attached to the terminal, logging to standard output')
  .action(async (o) => { exitCode = await startMaster(configDir(), !!o.foreground); });
program.command('stop').description('stop the mail system').action(async () => { exitCode = await stopMaster(configDir()); });
program.command('reload').description('re-read the configuration and reopen the log (SIGHUP)')
  .action(() => { exitCode = signalMaster(configDir(), 'SIGHUP'); if (!exitCode) console.log('postern: reload requested'); });
program.command('abort').description('stop immediately: SIGKILL to master and every service, work in hand is dropped')
  .action(async () => { exitCode = await abortMaster(configDir()); });
program.command('log').description('the mail log (maillog_file), printed as Postfix\'s maillog reads')
  .option('-f, --follow', 'keep printing new lines as they are logged (until interrupted)')
  .option('--queue-id <id>', 'only lines about this message')
  .option('-n, --lines <n>', 'only the last N lines (default: all; 10 with --follow)')
  .option('--json', 'the JSON lines as logged')
  .action(async (o) => { await showLog(MainConfig.load(configDir()), { follow: o.follow, queueId: o.queueId, json: o.json, lines: o.lines }); });
program.command('status').description('which services run, their pids and users')
  .option('--json', 'one JSON object')
  .action((o) => {
    const s = statusReport(configDir());
    if (o.json) { console.log(JSON.stringify(s)); if (!s.running) exitCode = 1; return; }
    if (!s.running) { console.log('postern: not running'); exitCode = 1; return; }
    console.log(`master      pid ${String(s.master!.pid).padEnd(8)} user ${s.master!.user}`);
    for (const x of s.services) {
      console.log(`${x.command.padEnd(11)} pid ${String(x.pid ?? '-').padEnd(8)} user ${String(x.user).padEnd(15)} ${x.type}:${x.service}${x.running ? '' : '  (not running)'}`);
    }
  });

const config = program.command('config').description('read and change main.cf (postconf)');
config.command('get <name...>').description('print parameter values (expanded)').action((names: string[]) => {
  const cfg = MainConfig.load(configDir());
  for (const n of names) {
    try { console.log(`${n} = ${cfg.get(n)}`); } catch { fail(`unknown parameter ${n}`); }
  }
});
config.command('set <setting...>').description('set name=value in main.cf (postconf -e)').action((settings: string[]) => {
  const pairs: [string, string][] = [];
  for (const s of settings) {
    const m = /^([A-Za-z0-9_]+)\s*=\s*(.*)$/.exec(s);
    if (!m) return fail(`"${s}": want name=value`);
    pairs.push([m[1], m[2].trim()]);
  }
  try { setMainCfParameters(configDir(), pairs); } catch (e) { fail((e as Error).message); }
});
config.command('show').description('parameters set in main.cf (postconf -n), or every default (-d)')
  .option('--defaults', 'every parameter with its default value')
  .action((o) => {
    const rows = o.defaults ? defaultParameters() : MainConfig.load(configDir()).explicit();
    for (const [k, v] of rows.sort((a, b) => a[0].localeCompare(b[0]))) console.log(`${k} = ${v}`);
  });

const user = program.command('user').description('mail users (Dovecot-compatible passwd-file)');
user.command('add <address>').description('add a mail user')
  .option('--password-stdin', 'read the password from standard input')
  .addOption(new Option('--mailbox <format>', 'mailbox format').choices(['maildir', 'mbox']).default('maildir'))
  .action(async (address: string, o) => {
    const addr = address.toLowerCase();
    const bad = validateMailboxAddress(addr);
    if (bad) return fail(`${address}: ${bad}`);
    const cfg = MainConfig.load(configDir());
    const { local, domain } = splitAddress(addr);
    let password: string;
    if (o.passwordStdin) password = await readStdinLine();
    else { password = randomBytes(12).toString('base64url'); console.log(`postern: generated password for ${addr}: ${password}`); }
    if (!password) return fail('empty password');
    const accounts = serviceAccounts(cfg);
    const home = path.join(cfg.get('virtual_mailbox_base'), domain, local);
    try {
      await userWriter(cfg, accounts).addUser(addr, hashPassword(password), { uid: accounts.mailbox.uid, gid: accounts.mailbox.gid, home, mailbox: o.mailbox });
    } catch (e) { return fail((e as Error).message); }
    if (isRoot()) fixConfigOwnership(configDir());
    // a domain a table of virtual_mailbox_domains lists (a database) is ours already
    if (!localDomains(cfg).has(domain) && !(await new LocalDomains(cfg).has(domain).catch(() => false))) {
      setMainCfParameters(configDir(), [['virtual_mailbox_domains', [...cfg.list('virtual_mailbox_domains'), domain].join(', ')]]);
      console.log(`postern: added ${domain} to virtual_mailbox_domains`);
    }
    console.log(`postern: added ${addr} (${o.mailbox}, ${home})`);
  });
user.command('passwd <address>').description('change a mail user\'s password (asked twice on a terminal)')
  .option('--password-stdin', 'read the password from standard input')
  .action(async (address: string, o) => {
    const addr = address.toLowerCase();
    const cfg = MainConfig.load(configDir());
    let password: string;
    try { password = await readNewPassword(!!o.passwordStdin); } catch (e) { return fail((e as Error).message); }
    if (!password) return fail('empty password');
    let changed: boolean;
    try { changed = await userWriter(cfg, serviceAccounts(cfg)).setPassword(addr, hashPassword(password)); } catch (e) { return fail((e as Error).message); }
    if (!changed) return fail(`${address}: no such user`);
    if (isRoot()) fixConfigOwnership(configDir());
    console.log(`postern: changed the password of ${addr}`);
  });
user.command('list').description('list mail users').option('--json', 'one JSON object per line').action(async (o) => {
  const db = userDbOf(MainConfig.load(configDir()));
  if (!db.list) return fail(`${db.spec}: this table type cannot list its users`);
  for (const e of await db.list()) {
    console.log(o.json ? JSON.stringify({ user: e.user, uid: e.uid, gid: e.gid, home: e.home, mail: e.extra.userdb_mail ?? null }) : e.user);
  }
});
user.command('del <address>').description('remove a mail user (the mailbox stays on disk)').action(async (address: string) => {
  const cfg = MainConfig.load(configDir());
  if (!await userWriter(cfg, serviceAccounts(cfg)).deleteUser(address.toLowerCase())) fail(`${address}: no such user`);
  else console.log(`postern: removed ${address.toLowerCase()}`);
});

const queue = program.command('queue').description('the mail queue');
queue.command('list').alias('mailq').description('list queued mail (mailq, postqueue -p / -j)')
  .option('--json', 'one JSON object per message, postqueue -j fields')
  .action(async (o) => {
    const spool = spoolOf(configDir());
    let entries;
    try { entries = await listQueue(spool); } catch (e) { return fail((e as Error).message); }
    process.stdout.write(o.json ? formatJson(entries) : formatMailq(entries));
  });
addQueueAdminCommands(queue, configDir, (code) => { exitCode = code; });

addDkimCommands(program, configDir, fail);
addCheckCommand(program, configDir, (code) => { exitCode = code; });
addSetupCommand(program, configDir);
addMapCommands(program, configDir, (code) => { exitCode = code; });
addDnsCommands(program, configDir, (code) => { exitCode = code; });
addStatsCommand(program, configDir);
addTlsrptCommands(program, configDir, (code) => { exitCode = code; });

program.parseAsync(process.argv).then(() => { process.exitCode = exitCode; }, (e) => {
  process.stderr.write(`postern: ${(e as Error).message}\n`);
  process.exitCode = 1;
});
void fs;
