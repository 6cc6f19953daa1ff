/**
 * The DNS check's findings for the status page: `postern dns check --json`,
 * the CLI's own code, run as a child process (this package depends on common
 * only; the check lives in the CLI). Run at start and then every
 * DNS_CHECK_EVERY_MS, never two at once, each bounded in time and output.
 */
import { spawn } from 'node:child_process';
import * as path from 'node:path';

export const DNS_CHECK_EVERY_MS = 15 * 60_000;
const TIMEOUT_MS = 120_000;
const MAX_OUTPUT = 1024 * 1024;

export interface DnsFinding { level: string; domain: string; check: string; problem: string; records: string[] }

export interface DnsStatus {
  state: 'pending' | 'done' | 'failed';
  checked_at: string | null;
  error: string | null;
  errors: number;
  warnings: number;
  findings: DnsFinding[];
}

export class DnsChecker {
  status: DnsStatus = { state: 'pending', checked_at: null, error: null, errors: 0, warnings: 0, findings: [] };
  private running = false;
  private timer?: NodeJS.Timeout;

  /** `cliMain` is the CLI's compiled main.js; `configDir` the instance's. */
  constructor(private readonly cliMain: () => string, private readonly configDir: string) {}

  start(): void {
    void this.run();
    this.timer = setInterval(() => void this.run(), DNS_CHECK_EVERY_MS);
    this.timer.unref();
  }

  stop(): void { if (this.timer) clearInterval(this.timer); }

  async run(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      const { code, stdout, stderr } = await runBounded(process.execPath, [this.cliMain(), '-c', this.configDir, 'dns', 'check', '--json']);
      let report: any = null;
      try { report = JSON.parse(stdout); } catch { /* below */ }
      const at = new Date().toISOString();
      if (!report || !Array.isArray(report.findings)) {
        this.status = { ...this.status, state: 'failed', checked_at: at,
          error: (stderr.trim().split('\n').pop() || `postern dns check exited ${code}`).slice(0, 500) };
        return;
      }
      this.status = {
        state: 'done', checked_at: at, error: null, errors: Number(report.errors) || 0, warnings: Number(report.warnings) || 0,
        findings: report.findings.map((f: any) => ({
          level: String(f.level), domain: String(f.domain), check: String(f.check), problem: String(f.problem),
          records: Array.isArray(f.records) ? f.records.map(String) : [],
        })),
      };
    } finally {
      this.running = false;
    }
  }
}

function runBounded(cmd: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd: '/' });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let size = 0;
    const timer = setTimeout(() => child.kill('SIGKILL'), TIMEOUT_MS);
    const take = (into: Buffer[]) => (d: Buffer) => {
      size += d.length;
      if (size > MAX_OUTPUT) child.kill('SIGKILL'); else into.push(d);
    };
    child.stdout.on('data', take(out));
    child.stderr.on('data', take(err));
    child.on('error', (e) => { clearTimeout(timer); resolve({ code: -1, stdout: '', stderr: e.message }); });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') });
    });
  });
}

/** The CLI program beside this one (daemon_directory, or the installed program tree). */
export function cliMainPath(daemonDirectory: string): string {
  const dir = daemonDirectory || path.resolve(__dirname, '..', '..');
  return path.join(dir, 'cli', 'dist', 'main.js');
}
