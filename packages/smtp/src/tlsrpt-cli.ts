/**
 * `postern tlsrpt list|send` runs this under relay_user (the CLI spawns it with
 * that uid/gid when root): the records are that account's files, and reading
 * them as root would follow whatever it put there. Prints one JSON document on
 * standard output; log lines go to standard error.
 *
 *   node tlsrpt-cli.js CONFIG_DIR list|send
 */
import pino from 'pino';
import { MainConfig } from '@postern/common';
import { pendingReports, sendReports, ruaOf } from './tlsrpt-report.js';

async function main(): Promise<number> {
  const [configDir, cmd] = process.argv.slice(2);
  const config = MainConfig.load(configDir);
  const spoolRoot = config.get('queue_directory');
  const log = pino({ base: { service: 'tlsrpt', pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) } }, pino.destination({ dest: 2, sync: true }));
  if (cmd === 'list') {
    const reports = pendingReports(spoolRoot);
    const rua = new Map<string, string[] | string>();
    for (const r of reports) {
      if (rua.has(r.domain)) continue;
      rua.set(r.domain, await ruaOf(r.domain, config).then((u) => u ?? [], (e) => `TXT lookup failed: ${(e as Error).message}`));
    }
    process.stdout.write(JSON.stringify(reports.map((r) => ({ ...r, rua: rua.get(r.domain) }))) + '\n');
    return 0;
  }
  if (cmd === 'send') {
    // smtp's timer holds the lock for a moment at most: wait a little for it (bounded)
    let results = await sendReports(config, spoolRoot, log, true);
    for (let i = 0; !results && i < 20; i++) {
      await new Promise((r) => setTimeout(r, 500));
      results = await sendReports(config, spoolRoot, log, true);
    }
    if (!results) { process.stderr.write('another TLS-RPT run holds the lock; try again\n'); return 75; }
    process.stdout.write(JSON.stringify(results) + '\n');
    return results.some((r) => r.failed.length) ? 1 : 0;
  }
  process.stderr.write(`unknown command ${cmd}\n`);
  return 64;
}

main().then((code) => { process.exitCode = code; }, (e) => { process.stderr.write(`${(e as Error).message}\n`); process.exitCode = 1; });
