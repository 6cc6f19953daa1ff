/** start, stop, reload, status: the master's life as the administrator sees it. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { MainConfig, loadMasterCf, Spool, lookupSystemUser, isRoot, serviceAccounts, serviceAccessProblems, programPath } from '@postern/common';


export function spoolOf(configDir: string): Spool {
  return new Spool(MainConfig.load(configDir).get('queue_directory'));
}

export function masterPid(spool: Spool): number | null {
  try {
    const pid = parseInt(fs.readFileSync(spool.pidFile(), 'utf8'), 10);
    process.kill(pid, 0);
    return pid;
  } catch { return null; }
}

/** Check main.cf and master.cf; prints `file:line: problem` and returns false on an error. */
export function checkConfig(configDir: string): boolean {
  try {
    MainConfig.load(configDir);
    loadMasterCf(configDir);
    return true;
  } catch (e) {
    process.stderr.write(`postern: fatal: ${(e as Error).message}\n`);
    return false;
  }
}

/**
 * As root: can every service account read main.cf and reach the spool? A
 * service that cannot dies at every start and master restarts it forever, so
 * start refuses, naming the directory that blocks which account.
 */
export function checkServiceAccess(configDir: string): boolean {
  if (!isRoot()) return true;
  let problems: string[];
  try {
    const config = MainConfig.load(configDir);
    problems = serviceAccessProblems(configDir, config, loadMasterCf(configDir), serviceAccounts(config));
  } catch { return true; } // a missing account: master names it
  for (const p of problems) process.stderr.write(`postern: fatal: ${p}\n`);
  return problems.length === 0;
}

/** Stop a master that did not come up: SIGTERM (it stops its services in order), then SIGKILL. */
async function stopFailedMaster(child: ReturnType<typeof spawn>, exited: Promise<number>): Promise<void> {
  // timers cleared once master is gone: a pending one would keep this command alive
  const within = async (p: Promise<unknown>, ms: number): Promise<boolean> => {
    let timer: NodeJS.Timeout | undefined;
    const done = await Promise.race([p.then(() => true), new Promise<false>((r) => { timer = setTimeout(() => r(false), ms); })]);
    clearTimeout(timer);
    return done;
  };
  try { child.kill('SIGTERM'); } catch { return; }
  if (!(await within(exited, 30000))) {
    try { child.kill('SIGKILL'); } catch { /* gone */ }
    await within(exited, 5000);
  }
}

export async function startMaster(configDir: string, foreground: boolean): Promise<number> {
  if (!checkConfig(configDir)) return 1;
  if (!checkServiceAccess(configDir)) return 1;
  const spool = spoolOf(configDir);
  const running = masterPid(spool);
  if (running) { process.stderr.write(`postern: fatal: already running (pid ${running})\n`); return 1; }
  const masterProgram = programPath('master', MainConfig.load(configDir));
  if (foreground) return runForeground(masterProgram, configDir);
  const child = spawn(process.execPath, [masterProgram, configDir], { detached: true, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d) => { stderr += d; });
  const exited = new Promise<number>((r) => child.once('exit', (code) => r(code ?? 1)));
  const deadline = Date.now() + 20000;
  while (Date.now() < deadline) {
    const result = await Promise.race([exited, new Promise<null>((r) => setTimeout(() => r(null), 100))]);
    if (result !== null) { process.stderr.write(stderr || `postern: master exited with status ${result}\n`); return 1; }
    const status = readStatus(spool);
    // a services.json left by a master that was killed names the old pids: only the new master's counts
    if (status && status.master === child.pid && status.services.every((s: any) => s.running)) {
      child.stderr!.destroy();
      child.unref();
      console.log(`postern: started (master pid ${child.pid}, ${status.services.length} service processes)`);
      return 0;
    }
  }
  // do not leave a master behind restarting services that cannot start, nor wait on its stderr forever
  const status = readStatus(spool);
  const down = status?.master === child.pid ? status.services.filter((s: any) => !s.running).map((s: any) => `${s.command} (${s.service})`) : [];
  process.stderr.write(`postern: master did not report its services running within 20 s${down.length ? `; not running: ${[...new Set(down)].join(', ')}` : ''}; stopping it (see the log, "postern check")\n`);
  await stopFailedMaster(child, exited);
  child.stderr!.destroy();
  child.unref();
  return 1;
}

/**
 * `start --foreground`: master as a child process on this terminal (its log on
 * standard output). Ctrl-C reaches master through the terminal's process
 * group; a SIGTERM or SIGHUP sent to this command is passed on. Exits with
 * master's status.
 */
function runForeground(masterProgram: string, configDir: string): Promise<number> {
  const child = spawn(process.execPath, [masterProgram, configDir, '--foreground'], { stdio: 'inherit' });
  const pass = (signal: NodeJS.Signals) => () => { try { child.kill(signal); } catch { /* gone */ } };
  const handlers: [NodeJS.Signals, () => void][] = [['SIGINT', () => undefined], ['SIGTERM', pass('SIGTERM')], ['SIGHUP', pass('SIGHUP')]];
  for (const [sig, h] of handlers) process.on(sig, h);
  return new Promise((resolve) => {
    child.once('error', (e) => { process.stderr.write(`postern: cannot start master: ${e.message}\n`); resolve(1); });
    child.once('exit', (code, signal) => {
      for (const [sig, h] of handlers) process.off(sig, h);
      resolve(code ?? (signal ? 1 : 0));
    });
  });
}

export async function stopMaster(configDir: string): Promise<number> {
  const spool = spoolOf(configDir);
  const pid = masterPid(spool);
  if (!pid) { console.log('postern: not running'); return 0; }
  process.kill(pid, 'SIGTERM');
  const deadline = Date.now() + 40000;
  while (Date.now() < deadline) {
    try { process.kill(pid, 0); } catch { console.log('postern: stopped'); return 0; }
    await new Promise((r) => setTimeout(r, 100));
  }
  process.stderr.write(`postern: master (pid ${pid}) did not stop within 40 s\n`);
  return 1;
}

export function signalMaster(configDir: string, signal: NodeJS.Signals): number {
  const pid = masterPid(spoolOf(configDir));
  if (!pid) { process.stderr.write('postern: not running\n'); return 1; }
  process.kill(pid, signal);
  return 0;
}

/** The parent of a process, from /proc: a service's pid is killed only while master is its parent. */
function parentOf(pid: number): number | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return parseInt(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1], 10);
  } catch { return null; }
}

function alive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch (e) { return (e as NodeJS.ErrnoException).code === 'EPERM'; }
}

/**
 * postfix abort: SIGKILL to master and to every service it started. A service
 * would notice master's death (its IPC channel closes) and stop by itself, but
 * in an orderly way, finishing work in hand; abort means now.
 */
export async function abortMaster(configDir: string): Promise<number> {
  const spool = spoolOf(configDir);
  const pid = masterPid(spool);
  if (!pid) { process.stderr.write('postern: not running\n'); return 1; }
  const st = readStatus(spool);
  // services.json may be a dead master's: only children of this master are killed
  const children: number[] = (st?.master === pid ? st.services : []).map((s: any) => s.pid)
    .filter((p: unknown): p is number => typeof p === 'number' && parentOf(p) === pid);
  process.kill(pid, 'SIGKILL');
  for (const c of children) { try { process.kill(c, 'SIGKILL'); } catch { /* already gone */ } }
  const deadline = Date.now() + 10000;
  while ([pid, ...children].some(alive) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  const left = [pid, ...children].filter(alive);
  if (left.length) { process.stderr.write(`postern: still running after SIGKILL: pid ${left.join(', ')}\n`); return 1; }
  console.log(`postern: aborted (killed master pid ${pid} and ${children.length} service process${children.length === 1 ? '' : 'es'})`);
  return 0;
}

export function readStatus(spool: Spool): any | null {
  try { return JSON.parse(fs.readFileSync(spool.statusFile(), 'utf8')); } catch { return null; }
}

function userOfPid(pid: number): string {
  try {
    const uid = parseInt(/^Uid:\s+(\d+)/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1], 10);
    return lookupSystemUser(uid)?.name ?? String(uid);
  } catch { return '?'; }
}

export interface StatusReport {
  running: boolean;
  config: string;
  queue_directory: string;
  master: { pid: number; user: string } | null;
  /** One per process (a master.cf line with a process limit of N has N). */
  services: { service: string; type: string; command: string; pid: number | null; user: string; running: boolean }[];
}

export function statusReport(configDir: string): StatusReport {
  const spool = spoolOf(configDir);
  const pid = masterPid(spool);
  const base = { config: configDir, queue_directory: spool.root };
  if (!pid) return { running: false, ...base, master: null, services: [] };
  const st = readStatus(spool);
  // a services.json left by a killed master names dead or foreign pids
  const services = (st?.master === pid ? st.services : []).map((s: any) => {
    const up = typeof s.pid === 'number' && alive(s.pid) && parentOf(s.pid) === pid;
    // running = alive and serving (master marks a service once it listens)
    return { service: s.service, type: s.type, command: s.command, pid: up ? s.pid : null, user: up ? userOfPid(s.pid) : s.user, running: up && s.running !== false };
  });
  return { running: true, ...base, master: { pid, user: userOfPid(pid) }, services };
}
