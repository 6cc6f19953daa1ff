/**
 * `postern tlsrpt list [--json]` and `postern tlsrpt send`: the TLS-RPT reports
 * (RFC 8460, docs/tlsrpt.md) smtp will send, and sending them now. The work is
 * smtp's (packages/smtp/dist/tlsrpt-cli.js), run as relay_user: the session
 * records are that account's files, and root reading them would follow any
 * link it put there. This side only spawns it and prints its JSON answer.
 */
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { Command } from 'commander';
import { MainConfig, programPath, serviceAccounts } from '@postern/common';

interface Listed {
  domain: string; day: string; complete: boolean; start: number; end: number; sent: number;
  policies: { policy: { 'policy-type': string; 'mx-host'?: string[] }; summary: { 'total-successful-session-count': number; 'total-failure-session-count': number } }[];
  rua: string[] | string;
}

function runAsRelay(configDir: string, cmd: 'list' | 'send'): { code: number; out: any; err: string } {
  const config = MainConfig.load(configDir);
  const a = serviceAccounts(config);
  const script = path.join(path.dirname(programPath('smtp', config)), 'tlsrpt-cli.js');
  const r = spawnSync(process.execPath, [script, configDir, cmd], {
    encoding: 'utf8', timeout: 10 * 60 * 1000, cwd: '/',
    ...(a.privileged ? { uid: a.relay.uid, gid: a.relay.gid } : {}),
  });
  let out: any = null;
  try { out = r.stdout ? JSON.parse(r.stdout) : null; } catch { /* reported below */ }
  return { code: r.status ?? 1, out, err: r.stderr ?? String(r.error ?? '') };
}

const iso = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');

export function formatList(rows: Listed[]): string {
  if (!rows.length) return 'postern: no TLS-RPT reports pending\n';
  const lines = ['DOMAIN                         DAY         POLICY           MX                       OK   FAIL  RUA'];
  for (const r of rows) {
    const rua = Array.isArray(r.rua) ? (r.rua.length ? r.rua.join(',') : '(no TLS-RPT record: not sent)') : r.rua;
    for (const p of r.policies) {
      lines.push(`${r.domain.padEnd(30)} ${r.day}${r.complete ? ' ' : '*'} ${p.policy['policy-type'].padEnd(16)} ${(p.policy['mx-host'] ?? []).join(',').padEnd(24)} `
        + `${String(p.summary['total-successful-session-count']).padStart(4)} ${String(p.summary['total-failure-session-count']).padStart(5)}  ${rua}`);
    }
  }
  lines.push('* the day is not over: the daily run sends it after midnight UTC; "postern tlsrpt send" sends it now');
  return lines.join('\n') + '\n';
}

export function addTlsrptCommands(program: Command, configDir: () => string, setExit: (code: number) => void): void {
  const t = program.command('tlsrpt').description('TLS-RPT (RFC 8460) reports of outbound TLS, per recipient domain and day');
  t.command('list').description('the reports not sent yet: domain, day, sessions per policy, rua')
    .option('--json', 'one JSON array (RFC 8460 policies[] per report)')
    .action((o) => {
      const r = runAsRelay(configDir(), 'list');
      if (r.code !== 0 || !Array.isArray(r.out)) { process.stderr.write(`postern: tlsrpt list: ${r.err.trim() || `exit ${r.code}`}\n`); setExit(1); return; }
      const rows = (r.out as Listed[]).map((x) => ({ ...x, start: iso(x.start), end: iso(x.end) }));
      process.stdout.write(o.json ? JSON.stringify(rows) + '\n' : formatList(r.out));
    });
  t.command('send').description('send every pending report now, the current day\'s so far included')
    .option('--json', 'one JSON array: per report the rua it went to and the ones that failed')
    .action((o) => {
      const r = runAsRelay(configDir(), 'send');
      if (!Array.isArray(r.out)) { process.stderr.write(`postern: tlsrpt send: ${r.err.trim() || `exit ${r.code}`}\n`); setExit(1); return; }
      if (o.json) process.stdout.write(JSON.stringify(r.out) + '\n');
      else {
        for (const x of r.out) {
          if (x.skipped) console.log(`postern: ${x.domain} ${x.day}: ${x.skipped}`);
          for (const u of x.sent) console.log(`postern: ${x.domain} ${x.day}: report ${x.report_id} sent to ${u}`);
          for (const f of x.failed) console.log(`postern: ${x.domain} ${x.day}: not sent to ${f.rua}: ${f.error} (kept for the next run)`);
        }
        if (!r.out.length) console.log('postern: no TLS-RPT reports pending');
      }
      if (r.code !== 0) setExit(1);
    });
}
