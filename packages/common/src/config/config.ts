/**
 * main.cf and master.cf, read the Postfix way: `name = value` with `$name`
 * expansion and continuation lines; master.cf a table of services. Every
 * complaint names the file and line so an administrator can act on it.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PARAMETERS, ParamSpec, paramSpec } from './params.js';
import { replaceFileDurably } from '../util/files.js';

export class ConfigError extends Error {
  constructor(readonly file: string, readonly line: number, problem: string) {
    super(`${path.basename(file)}:${line}: ${problem}`);
    this.name = 'ConfigError';
  }
}

interface RawValue { value: string; line: number }

/** Logical lines of a Postfix-style file: comments dropped, continuations joined. */
function logicalLines(text: string): { text: string; line: number }[] {
  const out: { text: string; line: number }[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/\r$/, '');
    if (/^\s*(#|$)/.test(line)) return;
    if (/^\s/.test(line) && out.length) out[out.length - 1].text += ' ' + line.trim();
    else out.push({ text: line.trim(), line: i + 1 });
  });
  return out;
}

const TIME_UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400, w: 604800 };

/** A Postfix time value (`90`, `30m`, `1h`, `2d`, `1w`; no unit means seconds) in seconds, or null. */
export function parseTimeValue(text: string): number | null {
  const m = /^(\d+)([smhdw]?)$/.exec(text.trim());
  return m ? parseInt(m[1], 10) * TIME_UNITS[m[2] || 's'] : null;
}

function checkValue(spec: ParamSpec, value: string): string | null {
  switch (spec.type) {
    case 'int': case 'size': return /^\d+$/.test(value) ? null : `${spec.name}: "${value}" is not a whole number`;
    case 'time': return /^\d+[smhdw]?$/.test(value) ? null : `${spec.name}: "${value}" is not a time (a number with s, m, h, d or w)`;
    case 'bool': return /^(yes|no)$/i.test(value) ? null : `${spec.name}: "${value}" is not yes or no`;
    case 'enum': return spec.values!.includes(value) ? null : `${spec.name}: "${value}" is not one of ${spec.values!.join(', ')}`;
    default: { const p = spec.check?.(value); return p ? `${spec.name}: ${p}` : null; }
  }
}

export class MainConfig {
  readonly warnings: string[] = [];

  constructor(readonly file: string, private readonly raw: Map<string, RawValue>,
    private readonly overrides: Map<string, string> = new Map()) {}

  /**
   * Throws the first ConfigError; given `problems`, collects every one there
   * instead (`postern check`) and returns what could be read.
   */
  static parse(text: string, file: string, problems?: ConfigError[]): MainConfig {
    const report = reporter(problems);
    const raw = new Map<string, RawValue>();
    const cfg = new MainConfig(file, raw);
    for (const { text: l, line } of logicalLines(text)) {
      const m = /^([A-Za-z0-9_]+)\s*=\s*(.*)$/.exec(l);
      if (!m) { report(new ConfigError(file, line, `expected "name = value", found "${l.slice(0, 60)}"`)); continue; }
      raw.set(m[1], { value: m[2].trim(), line });
      if (!paramSpec(m[1])) cfg.warnings.push(`${path.basename(file)}:${line}: unknown parameter ${m[1]} (ignored)`);
    }
    cfg.validate(report);
    return cfg;
  }

  static load(configDir: string, problems?: ConfigError[]): MainConfig {
    const file = path.join(configDir, 'main.cf');
    let text: string;
    try { text = fs.readFileSync(file, 'utf8'); } catch (e) {
      throw new ConfigError(file, 0, `cannot read: ${(e as Error).message}`);
    }
    const cfg = MainConfig.parse(text, file, problems);
    if (!cfg.raw.has('config_directory')) cfg.raw.set('config_directory', { value: configDir, line: 0 });
    cfg.expanded.clear(); // nothing read through get() may predate that
    return cfg;
  }

  /** The same configuration seen through a master.cf entry's `-o name=value` overrides. */
  withOverrides(overrides: Map<string, string>): MainConfig {
    const merged = new Map(this.overrides);
    for (const [k, v] of overrides) merged.set(k, v);
    return new MainConfig(this.file, this.raw, merged);
  }

  private validate(report: (e: ConfigError) => void): void {
    for (const [name, { value, line }] of this.raw) {
      const spec = paramSpec(name);
      if (!spec) continue;
      let problem: string | null;
      try { problem = checkValue(spec, this.expand(value, name, 0)); } catch (e) {
        if (!(e instanceof ConfigError)) throw e;
        report(e);
        continue;
      }
      if (problem) report(new ConfigError(this.file, line, problem));
    }
  }

  /** Where a parameter was set, for error messages; 0 when it has its default. */
  lineOf(name: string): number { return this.raw.get(name)?.line ?? 0; }

  isSet(name: string): boolean { return this.overrides.has(name) || this.raw.has(name); }

  /** Unexpanded value as written (main.cf, override or default). */
  rawValue(name: string): string {
    const o = this.overrides.get(name);
    if (o !== undefined) return o;
    const r = this.raw.get(name);
    if (r) return r.value;
    const spec = paramSpec(name);
    if (!spec) throw new Error(`unknown parameter ${name}`);
    return spec.default;
  }

  private expand(value: string, from: string, depth: number): string {
    if (depth > 20) throw new ConfigError(this.file, this.lineOf(from), `${from}: $-expansion nests too deep (a loop?)`);
    return value.replace(/\$(\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))/g, (_m, _a, braced, bare) => {
      const name = braced ?? bare;
      if (!paramSpec(name) && !this.raw.has(name) && !this.overrides.has(name)) return '';
      return this.expand(this.rawValue(name), name, depth + 1);
    });
  }

  get(name: string): string {
    // Expanded once per name: a MainConfig never changes once loaded (a reload makes a new
    // one), and services ask for the same parameters for every message and session.
    let value = this.expanded.get(name);
    if (value === undefined) this.expanded.set(name, value = this.expand(this.rawValue(name), name, 0));
    return value;
  }
  private readonly expanded = new Map<string, string>();
  int(name: string): number { return parseInt(this.get(name), 10); }
  bool(name: string): boolean { return /^yes$/i.test(this.get(name)); }
  /** Time parameter in seconds. */
  seconds(name: string): number {
    const s = parseTimeValue(this.get(name));
    if (s === null) throw new ConfigError(this.file, this.lineOf(name), `${name}: not a time`);
    return s;
  }
  list(name: string): string[] { return this.get(name).split(/[\s,]+/).filter(Boolean); }

  /** `postconf -n`: the parameters set in main.cf, as written. */
  explicit(): [string, string][] {
    return [...this.raw].filter(([, v]) => v.line > 0).map(([k, v]) => [k, v.value]);
  }
}

/** Throw each problem, or collect them when the caller gave a list. */
function reporter(problems?: ConfigError[]): (e: ConfigError) => void {
  return (e) => { if (!problems) throw e; problems.push(e); };
}

/** All parameters with their defaults, for `config show --defaults`. */
export function defaultParameters(): [string, string][] {
  return PARAMETERS.map((p) => [p.name, p.default]);
}

// ---------------------------------------------------------------- master.cf

export type ServiceType = 'inet' | 'unix';

/** Program packages by master.cf command name; lmtp is the smtp program in LMTP mode, as in Postfix. */
export const SERVICE_PROGRAMS: Record<string, string> = {
  smtpd: 'smtpd', cleanup: 'cleanup', qmgr: 'qmgr', smtp: 'smtp', lmtp: 'smtp', local: 'local', pickup: 'pickup', showq: 'showq', anvil: 'anvil',
  metrics: 'metrics', proxymap: 'proxymap',
};

export interface MasterEntry {
  /** `[host:]port` or a port name for inet; a socket name (under private/) for unix. */
  service: string;
  type: ServiceType;
  /** `-` for the command's default user. */
  user: string;
  maxproc: number;
  command: string;
  overrides: Map<string, string>;
  line: number;
}

const PORT_NAMES: Record<string, number> = { smtp: 25, submission: 587, submissions: 465, smtps: 465 };

/**
 * metrics_listen as host and port, or null when it is empty (metrics off).
 * A host is required: the page and the metrics are for the operator, and a
 * bare port would listen on every interface.
 */
export function metricsListenAddress(config: MainConfig): { host: string; port: number } | null {
  const value = config.get('metrics_listen').trim();
  if (!value) return null;
  const a = parseListenAddress(value);
  if (!a || !a.host || !/^\d+$/.test(value.slice(value.lastIndexOf(':') + 1))) {
    throw new ConfigError(config.file, config.lineOf('metrics_listen'), `metrics_listen: "${value}" is not host:port (for example 127.0.0.1:9154)`);
  }
  return { host: a.host, port: a.port };
}

export function parseListenAddress(service: string): { host?: string; port: number } | null {
  const m = /^(?:\[?([^\]]*?)\]?:)?([A-Za-z0-9-]+)$/.exec(service);
  if (!m) return null;
  const port = /^\d+$/.test(m[2]) ? parseInt(m[2], 10) : PORT_NAMES[m[2]];
  if (!port || port > 65535) return null;
  return { host: m[1] || undefined, port };
}

/** Throws the first ConfigError; given `problems`, collects every one there instead (`postern check`). */
export function parseMasterCf(text: string, file: string, problems?: ConfigError[]): MasterEntry[] {
  const report = reporter(problems);
  const entries: MasterEntry[] = [];
  const seen = new Set<string>();
  for (const { text: l, line } of logicalLines(text)) {
    try {
      entries.push(parseMasterLine(l, line, file, seen));
    } catch (e) {
      if (!(e instanceof ConfigError)) throw e;
      report(e);
    }
  }
  for (const need of ['cleanup', 'qmgr']) {
    if (!entries.some((e) => e.command === need)) report(new ConfigError(file, 0, `no ${need} service defined`));
  }
  return entries;
}

function parseMasterLine(l: string, line: number, file: string, seen: Set<string>): MasterEntry {
  const f = l.split(/\s+/);
  if (f.length < 5) throw new ConfigError(file, line, `expected "service type user maxproc command [args]", found ${f.length} fields`);
  const [service, type, user, maxprocText, command, ...args] = f;
  if (type !== 'inet' && type !== 'unix') throw new ConfigError(file, line, `unknown service type "${type}" (inet or unix)`);
  if (!SERVICE_PROGRAMS[command]) throw new ConfigError(file, line, `unknown service command "${command}"`);
  if (type === 'inet' && !parseListenAddress(service)) throw new ConfigError(file, line, `bad listen address "${service}"`);
  if (type === 'unix' && !/^[a-z][a-z0-9_-]*$/.test(service)) throw new ConfigError(file, line, `bad socket name "${service}"`);
  if (maxprocText !== '-' && !/^[1-9]\d*$/.test(maxprocText)) throw new ConfigError(file, line, `bad process limit "${maxprocText}"`);
  if (user !== '-' && !/^[a-z_][a-z0-9_-]*$/.test(user)) throw new ConfigError(file, line, `bad user name "${user}"`);
  const maxproc = maxprocText === '-' ? 1 : parseInt(maxprocText, 10);
  if (command === 'qmgr' && maxproc !== 1) throw new ConfigError(file, line, 'qmgr must run as exactly one process');
  // two pickups would both take the same maildrop file and queue it twice
  if (command === 'pickup' && maxproc !== 1) throw new ConfigError(file, line, 'pickup must run as exactly one process');
  if (command === 'pickup' && type !== 'unix') throw new ConfigError(file, line, 'pickup takes wake-up requests on a unix socket only');
  // the client counters must be one set, shared by every smtpd process
  if (command === 'anvil' && (maxproc !== 1 || type !== 'unix')) throw new ConfigError(file, line, 'anvil must run as exactly one process on a unix socket');
  // one set of counters, fed by master over its socket
  if (command === 'metrics' && (maxproc !== 1 || type !== 'unix')) throw new ConfigError(file, line, 'metrics must run as exactly one process on a unix socket');
  const overrides = new Map<string, string>();
  for (let i = 0; i < args.length; i++) {
    if (args[i] !== '-o' || i + 1 >= args.length) throw new ConfigError(file, line, `unexpected argument "${args[i]}" (only -o name=value)`);
    const m = /^([A-Za-z0-9_]+)=(.*)$/.exec(args[++i]);
    if (!m) throw new ConfigError(file, line, `bad override "${args[i]}" (want -o name=value)`);
    const spec = paramSpec(m[1]);
    if (!spec) throw new ConfigError(file, line, `unknown parameter ${m[1]} in -o`);
    const problem = checkValue(spec, m[2]);
    if (problem) throw new ConfigError(file, line, problem);
    overrides.set(m[1], m[2]);
  }
  const key = `${type}/${service}`;
  if (seen.has(key)) throw new ConfigError(file, line, `duplicate service ${service}/${type}`);
  seen.add(key);
  return { service, type, user, maxproc, command, overrides, line };
}

export function loadMasterCf(configDir: string, problems?: ConfigError[]): MasterEntry[] {
  const file = path.join(configDir, 'master.cf');
  let text: string;
  try { text = fs.readFileSync(file, 'utf8'); } catch (e) {
    throw new ConfigError(file, 0, `cannot read: ${(e as Error).message}`);
  }
  return parseMasterCf(text, file, problems);
}

/** `postconf -e`: set parameters in main.cf in place, keeping comments and order. */
export function setMainCfParameters(configDir: string, settings: [string, string][]): void {
  const file = path.join(configDir, 'main.cf');
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  for (const [name, value] of settings) {
    if (!paramSpec(name)) throw new Error(`unknown parameter ${name}`);
    // a value with $name is checked once expanded, below
    const problem = value.includes('$') ? null : checkValue(paramSpec(name)!, value);
    if (problem) throw new Error(problem);
    const idx = lines.findIndex((l) => new RegExp(`^${name}\\s*=`).test(l));
    if (idx < 0) { lines.splice(lines[lines.length - 1] === '' ? lines.length - 1 : lines.length, 0, `${name} = ${value}`); continue; }
    let end = idx + 1;
    while (end < lines.length && /^\s+\S/.test(lines[end]) && !/^\s*#/.test(lines[end])) end++;
    lines.splice(idx, end - idx, `${name} = ${value}`);
  }
  // refuse to write a main.cf we could not read back (a value can be wrong only once expanded)
  MainConfig.parse(lines.join('\n'), file);
  const st = fs.statSync(file);
  replaceFileDurably(file, lines.join('\n'), st.mode & 0o7777, process.getuid?.() === 0 ? { uid: st.uid, gid: st.gid } : undefined);
}
