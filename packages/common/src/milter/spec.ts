/**
 * smtpd_milters / non_smtpd_milters values, in Postfix's syntax: a list of
 * `unix:/path` or `inet:host:port` (comma or space separated), each optionally
 * in braces with its own settings: `{ inet:127.0.0.1:8891, default_action=accept }`.
 */

export type MilterAction = 'accept' | 'tempfail' | 'reject' | 'quarantine';

export interface MilterSpec {
  /** As written (`inet:127.0.0.1:8891`): the milter's name in logs. */
  name: string;
  address: { kind: 'unix'; path: string } | { kind: 'inet'; host: string; port: number };
  /** Per-milter settings from the braces; unset means the main.cf parameter. */
  defaultAction?: MilterAction;
  connectTimeout?: number;
  commandTimeout?: number;
  contentTimeout?: number;
  protocol?: number;
}

const ACTIONS: readonly string[] = ['accept', 'tempfail', 'reject', 'quarantine'];

function parseTime(v: string): number | null {
  const m = /^(\d+)([smhdw]?)$/.exec(v);
  if (!m) return null;
  return Number(m[1]) * ({ '': 1, s: 1, m: 60, h: 3600, d: 86400, w: 604800 } as Record<string, number>)[m[2]];
}

function parseAddress(text: string): MilterSpec['address'] {
  if (text.startsWith('unix:')) {
    const path = text.slice(5);
    if (!path) throw new Error(`${text}: empty socket path`);
    return { kind: 'unix', path };
  }
  if (text.startsWith('inet:')) {
    const rest = text.slice(5);
    const m = /^\[([0-9A-Fa-f:.]+)\]:(\d+)$/.exec(rest) ?? /^([^:\s]+):(\d+)$/.exec(rest);
    if (!m) throw new Error(`${text}: expected inet:host:port`);
    const port = Number(m[2]);
    if (port < 1 || port > 65535) throw new Error(`${text}: port out of range`);
    return { kind: 'inet', host: m[1], port };
  }
  throw new Error(`${text}: expected unix:/path or inet:host:port`);
}

function parseOne(text: string): MilterSpec {
  if (!text.startsWith('{')) return { name: text, address: parseAddress(text) };
  if (!text.endsWith('}')) throw new Error(`${text}: missing "}"`);
  const parts = text.slice(1, -1).split(/[\s,]+/).filter(Boolean);
  if (!parts.length) throw new Error('empty { }');
  const spec: MilterSpec = { name: parts[0], address: parseAddress(parts[0]) };
  for (const p of parts.slice(1)) {
    const eq = p.indexOf('=');
    if (eq < 1) throw new Error(`${p}: expected name=value`);
    const [k, v] = [p.slice(0, eq).trim(), p.slice(eq + 1).trim()];
    switch (k) {
      case 'default_action':
        if (!ACTIONS.includes(v)) throw new Error(`default_action=${v}: not one of ${ACTIONS.join(', ')}`);
        spec.defaultAction = v as MilterAction;
        break;
      case 'connect_timeout': case 'command_timeout': case 'content_timeout': {
        const s = parseTime(v);
        if (s === null) throw new Error(`${k}=${v}: not a time`);
        if (k === 'connect_timeout') spec.connectTimeout = s;
        else if (k === 'command_timeout') spec.commandTimeout = s;
        else spec.contentTimeout = s;
        break;
      }
      case 'protocol':
        if (!/^[2346]$/.test(v)) throw new Error(`protocol=${v}: not 2, 3, 4 or 6`);
        spec.protocol = Number(v);
        break;
      default: throw new Error(`${k}: unknown milter setting`);
    }
  }
  return spec;
}

/** The milters named by a parameter value, in order; throws an Error saying what is wrong. */
export function parseMilterList(value: string): MilterSpec[] {
  const out: MilterSpec[] = [];
  let i = 0;
  const s = value.trim();
  while (i < s.length) {
    if (/[\s,]/.test(s[i])) { i++; continue; }
    let end: number;
    if (s[i] === '{') {
      end = s.indexOf('}', i);
      if (end < 0) throw new Error(`missing "}" after ${s.slice(i)}`);
      end++;
    } else {
      end = i;
      while (end < s.length && !/[\s,]/.test(s[end])) end++;
    }
    out.push(parseOne(s.slice(i, end)));
    i = end;
  }
  return out;
}

/** For params.ts: what is wrong with a milter list, or null. */
export function checkMilterList(value: string): string | null {
  try { parseMilterList(value); return null; } catch (e) { return (e as Error).message; }
}
