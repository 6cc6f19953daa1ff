/**
 * `postern log [--follow] [--queue-id ID] [--json] [--lines N]`: the structured
 * log (maillog_file, one JSON object per line) printed the way Postfix's
 * maillog reads:
 *
 *   Nov 25 00:40:21 postern/qmgr[13979]: 0006A1B2C3D4E5F6A7B8C: from=<a@b>, size=446, nrcpt=1 (queue active)
 */
import * as fs from 'node:fs';
import * as readline from 'node:readline';
import { MainConfig, isQueueId } from '@postern/common';

/** Postfix's fields, in Postfix's order; the rest follow in the order logged. */
const POSTFIX_FIELDS = ['client', 'sasl_username', 'from', 'to', 'orig_to', 'relay', 'delay', 'delays', 'dsn', 'size', 'nrcpt', 'status'];
const FRAME = new Set(['level', 'time', 'service', 'pid', 'queue_id', 'msg', 'hostname', 'err']);
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

function syslogTime(iso: unknown): string {
  const d = new Date(typeof iso === 'string' || typeof iso === 'number' ? iso : NaN);
  if (isNaN(d.getTime())) return '???';
  const two = (n: number) => String(n).padStart(2, '0');
  return `${MONTHS[d.getMonth()]} ${String(d.getDate()).padStart(2, ' ')} ${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
}

/**
 * `smtpd[submission]` (a master.cf service named other than its command) reads
 * `postern/submission/smtpd`, as Postfix's syslog_name does; a listener named
 * by its address (`127.0.0.1:25`) is plain `postern/smtpd`, the pid tells them apart.
 */
function programName(service: unknown): string {
  const s = String(service ?? '?');
  const m = /^([^[]+)\[(.+)\]$/.exec(s);
  if (!m) return `postern/${s}`;
  return /^[\d.:[\]a-f]*:\d+$|^\d+$/i.test(m[2]) ? `postern/${m[1]}` : `postern/${m[2]}/${m[1]}`;
}

function value(v: unknown): string {
  return typeof v === 'string' ? v : JSON.stringify(v);
}

/** One log object as a maillog line. */
export function formatLogLine(e: Record<string, any>): string {
  const level = e.level === 'warn' ? 'warning: ' : e.level === 'error' || e.level === 'fatal' ? `${e.level}: ` : '';
  const id = e.queue_id ? `${e.queue_id}: ` : '';
  const keys = [...POSTFIX_FIELDS.filter((k) => k in e), ...Object.keys(e).filter((k) => !FRAME.has(k) && !POSTFIX_FIELDS.includes(k))];
  const fields = keys.filter((k) => e[k] !== undefined && e[k] !== null).map((k) => `${k}=${value(e[k])}`).join(', ');
  let msg = String(e.msg ?? '');
  // smtp logs "sent (250 ...)" with status=sent: Postfix prints status=sent (250 ...)
  if (e.status && msg.startsWith(`${e.status} (`)) msg = msg.slice(String(e.status).length + 1);
  const text = msg.startsWith('(') && msg.endsWith(')') ? msg : msg ? `(${msg})` : '';
  const err = e.err !== undefined ? `: ${String(value(e.err)).split('\n')[0]}` : '';
  const body = fields ? `${fields}${text ? ` ${text}` : ''}${err}` : `${msg}${err}`;
  return `${syslogTime(e.time)} ${programName(e.service)}[${e.pid ?? '?'}]: ${level}${id}${body}`;
}

interface LogOptions { follow?: boolean; queueId?: string; json?: boolean; lines?: string }

/** The lines to print for one raw log line, or null when the filter leaves it out. */
function render(line: string, o: LogOptions): string | null {
  if (!line.trim()) return null;
  let e: Record<string, any> | null = null;
  if (line.startsWith('{')) { try { e = JSON.parse(line); } catch { e = null; } }
  if (o.queueId && !(e && Object.values(e).includes(o.queueId))) return null;
  if (o.json) return e ? line : null;
  return e ? formatLogLine(e) : line;
}

export async function showLog(config: MainConfig, o: LogOptions, out: NodeJS.WritableStream = process.stdout): Promise<void> {
  if (o.queueId !== undefined && !isQueueId(o.queueId)) throw new Error(`bad queue id "${o.queueId}"`);
  const limit = o.lines !== undefined ? parseInt(o.lines, 10) : o.follow ? 10 : Infinity;
  if (!(limit >= 0)) throw new Error(`--lines: "${o.lines}" is not a number`);
  const file = config.get('maillog_file');
  if (!file) throw new Error('maillog_file is empty: master logs to its standard output');
  let position = 0;
  let inode = 0;
  if (fs.existsSync(file)) {
    const st = fs.statSync(file);
    inode = st.ino;
    position = st.size;
    const tail: string[] = [];
    const rl = readline.createInterface({ input: fs.createReadStream(file, { end: Math.max(0, st.size - 1) }), crlfDelay: Infinity });
    for await (const line of rl) {
      const r = render(line, o);
      if (r === null) continue;
      if (limit === Infinity) out.write(r + '\n');
      else { tail.push(r); if (tail.length > limit) tail.shift(); }
    }
    for (const r of tail) out.write(r + '\n');
  } else if (!o.follow) {
    throw new Error(`${file}: no log yet`);
  }
  if (!o.follow) return;
  // follow as `tail -F` does: new bytes as they come, from the start of a new file after rotation
  let partial = Buffer.alloc(0);
  for (;;) {
    await new Promise((r) => setTimeout(r, 250));
    let st: fs.Stats;
    try { st = fs.statSync(file); } catch { continue; }
    if (st.ino !== inode || st.size < position) { inode = st.ino; position = 0; partial = Buffer.alloc(0); }
    if (st.size === position) continue;
    const fd = fs.openSync(file, 'r');
    try {
      const buf = Buffer.alloc(Math.min(st.size - position, 4 * 1024 * 1024));
      const n = fs.readSync(fd, buf, 0, buf.length, position);
      position += n;
      const data = Buffer.concat([partial, buf.subarray(0, n)]);
      const end = data.lastIndexOf(10) + 1; // whole lines only: a line may be half written
      partial = data.subarray(end);
      for (const line of data.subarray(0, end).toString('utf8').split('\n')) {
        const r = render(line, o);
        if (r !== null) out.write(r + '\n');
      }
    } finally { fs.closeSync(fd); }
  }
}
