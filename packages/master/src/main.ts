/**
 * master: the supervisor. Runs as root (or as a sandbox user), binds every
 * listener and service socket, puts the spool's owners and modes right, and
 * forks each master.cf service under its own user with the listening handle.
 * Restarts a crashed service with backoff, reloads on SIGHUP, stops in order
 * on SIGTERM. Never reads a message.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { fork, ChildProcess } from 'node:child_process';
import {
  MainConfig, ConfigError, MasterEntry, loadMasterCf, parseListenAddress, Spool, SERVICE_PROGRAMS,
  serviceAccounts, ServiceAccounts, defaultAccount, socketAccess, prepareSpool, prepareMailRoot, lookupSystemUser, SystemUser,
  checkRestrictionLists, masterCfLocation, secureUsersFile, userTableFile, programPath, CLEANUP_LOCAL, LOCAL_QMGR, metricsListenAddress,
} from '@postern/common';
import { LogSink } from './log-sink.js';
import { acquirePidFile, releasePidFile } from './pidfile.js';
import { MetricsFeed } from './metrics-feed.js';

interface Slot {
  entry: MasterEntry;
  index: number;
  user: SystemUser;
  handle: any;
  /** The second socket: cleanup's for the queue owner's clients (docs/security.md), local's for qmgr. */
  localHandle?: any;
  /** Who reaches the second socket, as the service is told with its handle. */
  localClients?: string;
  child?: ChildProcess;
  startedAt: number;
  failures: number;
  /** The child has called listen() on its handle: connections are accepted. */
  listening?: boolean;
  timer?: NodeJS.Timeout;
}

const createServerHandle: (address: string | null, port: number, addressType: number, fd?: number, flags?: number) => any =
  (net as any)._createServerHandle;

/** A listening handle that master binds but never accepts on: the children do (see docs/master.md). */
function bindHandle(entry: MasterEntry, spool: Spool, accounts: ServiceAccounts, socketPath?: string, access?: string): any {
  if (entry.type === 'inet') {
    const addr = parseListenAddress(entry.service)!;
    const host = addr.host ?? '::';
    // libuv defers a bind error to listen(); getsockname() reports it at once
    const bind = (): any => {
      const handle = createServerHandle(host, addr.port, net.isIPv6(host) ? 6 : 4);
      if (typeof handle === 'number') return handle;
      const err = handle.getsockname({});
      if (err) { handle.close(); return err; }
      return handle;
    };
    let h = bind();
    // a previous master's children may still be closing their copies of this listener
    for (let i = 0; h === -98 && i < 50; i++) {
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 200);
      h = bind();
    }
    if (typeof h === 'number') {
      const code = h === -98 ? 'address already in use' : h === -13 ? 'permission denied' : `error ${h}`;
      throw new Error(`cannot listen on ${host}:${addr.port}: ${code}`);
    }
    return h;
  }
  const sockPath = socketPath ?? socketPathOf(entry, spool);
  fs.rmSync(sockPath, { force: true });
  const h = createServerHandle(sockPath, -1, -1);
  if (typeof h === 'number') throw new Error(`cannot create socket ${sockPath}: error ${h}`);
  const perm = socketAccess(access ?? entry.command, accounts);
  if (accounts.privileged) fs.chownSync(sockPath, perm.uid, perm.gid);
  fs.chmodSync(sockPath, perm.mode);
  return h;
}

/**
 * A service's second socket: cleanup's for the queue owner's clients (the identity of a
 * request comes from the socket it used), local's for qmgr's delivery requests.
 */
function secondSocket(entry: MasterEntry, spool: Spool): { path: string; access: string; clients: string } | null {
  if (entry.type !== 'unix') return null;
  if (entry.command === 'cleanup') return { path: spool.privateSocket(`${entry.service}.local`), access: CLEANUP_LOCAL, clients: 'local' };
  if (entry.command === 'local') return { path: spool.privateSocket(`${entry.service}.qmgr`), access: LOCAL_QMGR, clients: 'qmgr' };
  return null;
}

/** Public services (showq) take requests from any local user; the rest sit in private/. */
function socketPathOf(entry: MasterEntry, spool: Spool): string {
  return entry.command === 'showq' ? spool.publicSocket(entry.service) : spool.privateSocket(entry.service);
}


export class Master {
  private slots: Slot[] = [];
  private stopping = false;
  /** Set once the pid file is ours: only then may stop() clean the spool's sockets. */
  private ownsSpool = false;
  private config!: MainConfig;
  private entries!: MasterEntry[];
  private spool!: Spool;
  private accounts!: ServiceAccounts;
  private feed?: MetricsFeed;
  private readonly startedAt = Date.now();

  constructor(private configDir: string, private sink: LogSink) {}

  private log(fields: Record<string, unknown>, msg: string): void {
    this.sink.event('master', fields, msg);
  }

  /** Load and check everything; throws ConfigError before anything is started. */
  load(): void {
    this.config = MainConfig.load(this.configDir);
    this.entries = loadMasterCf(this.configDir);
    // smtpd's restriction lists, as each listener sees them: a typo stops start, not mail
    for (const e of this.entries.filter((x) => x.command === 'smtpd')) {
      checkRestrictionLists(this.config.withOverrides(e.overrides), (name) => (e.overrides.has(name) ? masterCfLocation(this.configDir, e.line) : undefined));
    }
    metricsListenAddress(this.config); // a bad metrics_listen stops start, as any bad value
    for (const w of this.config.warnings) this.log({ level: 'warn' }, w);
  }

  start(): void {
    this.spool = new Spool(this.config.get('queue_directory'));
    this.accounts = serviceAccounts(this.config);
    // what is not a directory (a link planted in the spool) is left alone and logged
    for (const c of prepareSpool(this.spool, this.accounts)) if (c.startsWith('left ')) this.log({ level: 'warn' }, c);
    for (const c of prepareMailRoot(this.config.get('virtual_mailbox_base'), this.accounts)) if (c.startsWith('left ')) this.log({ level: 'warn' }, c);
    // the users file: root's, read by smtpd (group) and local (ACL); put back if someone changed it
    try {
      const users = userTableFile(this.config); // null: the users are not in a file (a database)
      for (const c of users ? secureUsersFile(users, this.accounts) : []) this.log({ level: c.startsWith('left ') ? 'warn' : 'info' }, c);
    } catch (e) {
      this.log({ level: 'error', err: (e as Error).message }, 'cannot set the users file\'s owner and ACL');
    }
    acquirePidFile(this.spool.pidFile());
    this.awaitOldGeneration();
    this.ownsSpool = true;
    for (const entry of this.entries) {
      // the metrics service runs only when metrics_listen asks for it (docs/metrics.md)
      if (entry.command === 'metrics') {
        if (!metricsListenAddress(this.config)) continue;
        this.feed = new MetricsFeed(this.spool.privateSocket(entry.service));
      }
      const user = entry.user === '-' ? defaultAccount(entry.command, this.accounts)
        : this.accounts.privileged ? lookupSystemUser(entry.user) : defaultAccount(entry.command, this.accounts);
      if (!user) throw new ConfigError(path.join(this.configDir, 'master.cf'), entry.line, `user "${entry.user}" does not exist`);
      const handle = bindHandle(entry, this.spool, this.accounts);
      const second = secondSocket(entry, this.spool);
      const localHandle = second ? bindHandle(entry, this.spool, this.accounts, second.path, second.access) : undefined;
      const localClients = second?.clients;
      for (let i = 0; i < entry.maxproc; i++) this.slots.push({ entry, index: i, user, handle, localHandle, localClients, startedAt: 0, failures: 0 });
    }
    if (this.feed) { const feed = this.feed; this.sink.tap = (line) => feed.push(line); feed.start(); }
    for (const slot of this.slots) this.spawn(slot);
    this.log({ services: this.slots.length, privileged: this.accounts.privileged }, `daemon started -- version ${version()}, configuration ${this.configDir}`);
  }

  /**
   * After a crash of master, its children exit when they notice (their IPC
   * channel closes), finishing the delivery in hand. Wait for them (bounded),
   * so a new qmgr does not take up a message the old one is still delivering.
   */
  private awaitOldGeneration(): void {
    let old: { services?: { pid: number | null }[] } = {};
    try { old = JSON.parse(fs.readFileSync(this.spool.statusFile(), 'utf8')); } catch { return; }
    const alive = (pid: number) => {
      try { return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('postern'); } catch { return false; }
    };
    const pids = (old.services ?? []).map((s) => s.pid).filter((p): p is number => !!p && alive(p));
    const deadline = Date.now() + 20000;
    while (pids.some(alive) && Date.now() < deadline) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 100);
    const left = pids.filter(alive);
    if (left.length) this.log({ level: 'warn', pids: left }, 'services of a previous master are still running');
  }

  private spawn(slot: Slot): void {
    const { entry } = slot;
    const overrides = Object.fromEntries(entry.overrides);
    // POSTERN_PROFILE_DIR (developers): every service writes a V8 CPU profile there when it exits
    const profile = process.env.POSTERN_PROFILE_DIR;
    const child = fork(programPath(SERVICE_PROGRAMS[entry.command], this.config), [], {
      execArgv: profile ? ['--cpu-prof', `--cpu-prof-dir=${profile}`] : [],
      env: {
        PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
        LANG: 'C.UTF-8',
        TZ: process.env.TZ ?? '',
        POSTERN_CONFIG: this.configDir,
        POSTERN_SERVICE: entry.service,
        POSTERN_COMMAND: entry.command,
        POSTERN_OVERRIDES: JSON.stringify(overrides),
        // fsync runs on libuv's thread pool: 4 threads would serialise a busy queue's syncs
        UV_THREADPOOL_SIZE: process.env.UV_THREADPOOL_SIZE ?? '16',
      },
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      serialization: 'advanced',
      // libuv drops supplementary groups when it changes uid/gid
      ...(this.accounts.privileged ? { uid: slot.user.uid, gid: slot.user.gid } : {}),
      cwd: '/',
    });
    slot.child = child;
    slot.startedAt = Date.now();
    slot.listening = false;
    // the name the service logs under (common/config/service.ts), now vouched for by master
    this.sink.attach(child, entry.command === entry.service ? entry.command : `${entry.command}[${entry.service}]`);
    child.once('spawn', () => {
      child.send({ type: 'listen' }, slot.handle);
      if (slot.localHandle) child.send({ type: 'listen', clients: slot.localClients }, slot.localHandle);
      this.writeStatus();
    });
    child.on('message', (msg: any) => {
      if (msg?.type === 'listening' && slot.child === child) { slot.listening = true; this.writeStatus(); }
    });
    child.on('error', (err) => this.log({ level: 'error', listener: entry.service, command: entry.command, child: child.pid, err: err.message }, 'service error'));
    child.once('exit', (code, signal) => {
      slot.child = undefined;
      this.writeStatus();
      if (this.stopping) return;
      // backoff grows with consecutive quick failures, never a tight loop
      slot.failures = Date.now() - slot.startedAt > 60000 ? 1 : slot.failures + 1;
      const delay = Math.min(60000, 500 * 2 ** (slot.failures - 1));
      this.log({ level: 'warn', listener: entry.service, command: entry.command, child: child.pid, code, signal, restart_in_ms: delay },
        `service ${entry.command} (${entry.service}) exited; restarting`);
      slot.timer = setTimeout(() => { slot.timer = undefined; if (!this.stopping) this.spawn(slot); }, delay);
    });
  }

  /** services.json: what `postern status` shows. */
  private writeStatus(): void {
    const services = this.slots.map((s) => ({
      service: s.entry.service, type: s.entry.type, command: s.entry.command, user: s.user.name, uid: s.user.uid,
      // running = serving: `postern start` returns only when every listener accepts connections
      pid: s.child?.pid ?? null, running: !!s.child && s.child.exitCode === null && !!s.listening,
      started: s.child ? new Date(s.startedAt).toISOString() : null,
    }));
    const file = this.spool.statusFile();
    const tmp = `${file}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify({ master: process.pid, master_started: new Date(this.startedAt).toISOString(), config: this.configDir, services }, null, 1) + '\n');
    fs.renameSync(tmp, file);
  }

  reload(): void {
    try {
      this.load();
    } catch (e) {
      this.log({ level: 'error', err: (e as Error).message }, 'reload refused: configuration error; keeping the running configuration');
      return;
    }
    this.sink.reopen();
    for (const s of this.slots) s.child?.send({ type: 'reload' });
    this.log({}, 'reload -- configuration re-read');
  }

  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.log({}, 'terminating on signal');
    this.sink.tap = undefined;
    this.feed?.stop();
    const running = this.slots.filter((s) => s.child);
    for (const s of this.slots) if (s.timer) clearTimeout(s.timer);
    // close master's own copies of the listeners: once smtpd closes its copies, new clients
    // are refused at once instead of waiting, unanswered, in a backlog nobody accepts from
    for (const h of new Set(this.slots.filter((s) => s.entry.type === 'inet').map((s) => s.handle))) h?.close?.();
    // smtpd first so no new mail arrives, then the rest
    const order = (s: Slot) => (s.entry.command === 'smtpd' ? 0 : 1);
    for (const phase of [0, 1]) {
      const group = running.filter((s) => order(s) === phase && s.child);
      await Promise.all(group.map((s) => new Promise<void>((resolve) => {
        const child = s.child!;
        const kill = setTimeout(() => child.kill('SIGKILL'), 20000);
        child.once('exit', () => {
          clearTimeout(kill);
          // its last lines may still wait in the pipe (the log sink reads each child at most
          // every 10 ms): 'close' comes once they are read; bounded, in case something it
          // started holds the pipe open
          const late = setTimeout(resolve, 2000);
          child.once('close', () => { clearTimeout(late); resolve(); });
        });
        if (child.connected) child.send({ type: 'stop' }); else child.kill('SIGTERM');
      })));
    }
    if (!this.ownsSpool) return;
    for (const e of this.entries) {
      if (e.type === 'unix') fs.rmSync(socketPathOf(e, this.spool), { force: true });
      const second = secondSocket(e, this.spool);
      if (second) fs.rmSync(second.path, { force: true });
    }
    fs.rmSync(this.spool.statusFile(), { force: true });
    releasePidFile(this.spool.pidFile());
  }
}

function version(): string {
  try { return JSON.parse(fs.readFileSync(path.resolve(__dirname, '..', '..', '..', 'package.json'), 'utf8')).version; } catch { return 'unknown'; }
}

export async function runMaster(configDir: string, foreground: boolean): Promise<number> {
  let config: MainConfig;
  try { config = MainConfig.load(configDir); } catch (e) {
    process.stderr.write(`postern: fatal: ${(e as Error).message}\n`);
    return 1;
  }
  const sink = new LogSink(foreground ? null : config.get('maillog_file') || null);
  const master = new Master(configDir, sink);
  try {
    master.load();
    master.start();
  } catch (e) {
    process.stderr.write(`postern: fatal: ${(e as Error).message}\n`);
    sink.event('master', { level: 'fatal', err: (e as Error).message }, 'cannot start');
    await master.stop().catch(() => undefined);
    return 1;
  }
  process.on('SIGHUP', () => master.reload());
  return new Promise((resolve) => {
    const stop = () => { void master.stop().then(() => { sink.close(); resolve(0); }); };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
  });
}

if (require.main === module) {
  const args = process.argv.slice(2);
  const configDir = args.find((a) => !a.startsWith('-')) ?? process.env.POSTERN_CONFIG ?? '/etc/postern';
  process.title = 'postern/master';
  runMaster(configDir, args.includes('--foreground')).then((code) => process.exit(code));
}
