/**
 * `postern setup`: put an installed system in order, as the Debian package's
 * postinst runs it after creating the service accounts. Creates what is
 * missing and sets owners and modes; never touches mail, queue files or a
 * configuration file's content. Safe to run again at any time.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Command } from 'commander';
import { MainConfig, Spool, serviceAccounts, prepareSpool, prepareMailRoot } from '@postern/common';
import { fixConfigOwnership, makeSelfSignedPair } from './init.js';

export interface SetupOptions {
  /** Make a self-signed certificate when smtpd_tls_cert_file and _key_file do not exist. */
  selfSignedCert?: boolean;
}

export function setupSystem(configDir: string, o: SetupOptions): string[] {
  const config = MainConfig.load(configDir);
  const accounts = serviceAccounts(config); // names the missing account, if one is
  const done: string[] = [];

  const spool = new Spool(config.get('queue_directory'));
  for (const c of prepareSpool(spool, accounts)) done.push(c);

  // the mailbox tree belongs to the delivery agent (as master does at start)
  for (const c of prepareMailRoot(config.get('virtual_mailbox_base'), accounts)) done.push(c);

  const log = config.get('maillog_file');
  if (log && !fs.existsSync(path.dirname(log))) {
    fs.mkdirSync(path.dirname(log), { recursive: true, mode: 0o750 });
    done.push(`created ${path.dirname(log)}`);
  }

  if (o.selfSignedCert) {
    // before an administrator sets myhostname, the machine's own name is the best guess
    const host = config.isSet('myhostname') ? config.get('myhostname') : os.hostname();
    if (makeSelfSignedPair(config.get('smtpd_tls_cert_file'), config.get('smtpd_tls_key_file'), host)) {
      done.push(`created a self-signed certificate for ${host} in ${config.get('smtpd_tls_cert_file')}`);
    }
  }
  if (accounts.privileged) for (const c of fixConfigOwnership(configDir)) done.push(c);
  return done;
}

export function addSetupCommand(program: Command, configDir: () => string): void {
  program.command('setup')
    .description('create the spool, mail root and log directory, and set their owners and modes and those of the users file and TLS key (the package runs it)')
    .option('--self-signed-cert', 'make a self-signed certificate if there is none')
    .action((o) => {
      for (const line of setupSystem(configDir(), { selfSignedCert: !!o.selfSignedCert })) console.log(`postern: ${line}`);
    });
}
