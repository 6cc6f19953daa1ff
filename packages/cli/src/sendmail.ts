/**
 * sendmail: the Sendmail/Postfix-compatible submission command (bin/sendmail).
 * Reads a message on standard input and leaves it in maildrop/ for pickup;
 * `-bp` lists the queue. It runs as whoever calls it and is trusted with
 * nothing: pickup takes the submitter's identity from the maildrop file's owner.
 *
 *   sendmail [-t] [-i] [-oi] [-f sender] [-r sender] [-F fullname] [-C config]
 *            [-N dsn] [-R ret] [-V envid] [-bm | -bp] [--] [recipient ...]
 */
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import addressparser from 'nodemailer/lib/addressparser';
import {
  MainConfig, Spool, newQueueId, fsyncDir, requestJson, lookupSystemUser, MaildropHeader, formatMaildropHeader,
  envelopeAddressProblem, qualifyAddress, DSN_NOTIFY, submitRefusal,
} from '@postern/common';
import { listQueue as queueEntries, formatMailq } from './queue.js';

// sysexits.h, as Sendmail and Postfix exit
const EX_USAGE = 64;
const EX_DATAERR = 65;
const EX_CONFIG = 78;
const EX_TEMPFAIL = 75;
const EX_NOPERM = 77;

class SendmailError extends Error {
  constructor(message: string, readonly exitCode: number) { super(message); }
}

export interface SendmailOptions {
  configDir: string;
  mode: 'deliver' | 'list';
  sender: string | null;
  fullname?: string;
  extract: boolean;
  ignoreDots: boolean;
  recipients: string[];
  notify?: string[];
  ret?: 'FULL' | 'HDRS';
  envid?: string;
  warnings: string[];
}

/** Postfix's sendmail option letters that take a value (its getopt string). */
const TAKES_VALUE = new Set('ABCFLNORVXbefhopr');
/** Sendmail options that mean nothing here and are accepted silently, as Postfix does. */
const IGNORED = new Set('ABGILOUXcehmnpvx');

/** Addresses in one command-line argument or header value ("a@b, Name <c@d>", groups). */
function addressesIn(text: string): string[] {
  // addressparser reads a bare word as a display name; to sendmail it is a local address
  return addressparser(text, { flatten: true })
    .map((a) => (a.address || (/^[^\s"<>()@,;:\\]+$/.test(a.name) ? a.name : '')).trim())
    .filter(Boolean);
}

/** A -f/-r value: `<>` and `<a@b>` lose their brackets. */
function senderArgument(value: string): string {
  const m = /^<(.*)>$/.exec(value.trim());
  return m ? m[1] : value.trim();
}

export function parseSendmailArgs(argv: string[], env: NodeJS.ProcessEnv = process.env): SendmailOptions {
  const o: SendmailOptions = {
    configDir: env.POSTERN_CONFIG || '/etc/postern', mode: 'deliver', sender: null, extract: false, ignoreDots: false,
    recipients: [], warnings: [],
  };
  let i = 0;
  for (; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--') { i++; break; }
    if (!arg.startsWith('-') || arg === '-') break;
    // getopt: letters may be grouped (-ti); a letter that takes a value uses the rest or the next argument
    for (let j = 1; j < arg.length; j++) {
      const letter = arg[j];
      let value: string | undefined;
      if (TAKES_VALUE.has(letter)) {
        value = j + 1 < arg.length ? arg.slice(j + 1) : argv[++i];
        if (value === undefined) throw new SendmailError(`option -${letter} requires a value`, EX_USAGE);
        j = arg.length;
      }
      switch (letter) {
        case 't': o.extract = true; break;
        case 'i': o.ignoreDots = true; break;
        case 'f': case 'r': o.sender = senderArgument(value!); break;
        case 'F': o.fullname = value!; break;
        case 'C': o.configDir = value!; break;
        case 'o': if (value!.startsWith('i')) o.ignoreDots = true; break; // -oi; -odi, -oem, -om... mean nothing here
        case 'b':
          if (value === 'm') o.mode = 'deliver';
          else if (value === 'p') o.mode = 'list';
          else if (value === 's') throw new SendmailError('-bs (SMTP on standard input) is not supported: submit over SMTP instead', EX_USAGE);
          else throw new SendmailError(`-b${value}: unsupported mode (only -bm, send, and -bp, list the queue)`, EX_USAGE);
          break;
        case 'N': {
          const words = value!.toUpperCase().split(',').map((w) => w.trim()).filter(Boolean);
          if (!words.length || !words.every((w) => DSN_NOTIFY.includes(w)) || (words.includes('NEVER') && words.length > 1)) {
            throw new SendmailError(`-N ${value}: want "never" or a list of success, delay, failure`, EX_USAGE);
          }
          o.notify = words;
          break;
        }
        case 'R':
          if (!/^(full|hdrs)$/i.test(value!)) throw new SendmailError(`-R ${value}: want full or hdrs`, EX_USAGE);
          o.ret = value!.toUpperCase() as 'FULL' | 'HDRS';
          break;
        case 'V':
          if (!/^[\x21-\x7e]{1,100}$/.test(value!)) throw new SendmailError('-V: the envelope id must be 1-100 printable characters', EX_USAGE);
          o.envid = value!;
          break;
        case 'q': throw new SendmailError('-q is not supported: qmgr runs the queue on its own schedule', EX_USAGE);
        default:
          if (!IGNORED.has(letter)) o.warnings.push(`-${letter}: unknown option, ignored`);
      }
    }
  }
  for (const a of argv.slice(i)) o.recipients.push(...addressesIn(a));
  const cfg = o.configDir;
  // Postfix's -C names main.cf or its directory
  o.configDir = path.basename(cfg) === 'main.cf' ? path.dirname(cfg) : cfg;
  return o;
}

/** The submitter's login name, for the default sender and From: (pickup works it out again from the file owner). */
function loginName(): string {
  try { return os.userInfo().username; } catch { return lookupSystemUser(process.getuid!())?.name ?? String(process.getuid!()); }
}

/** A display name as RFC 5322 wants it: as is, quoted, or RFC 2047-encoded. */
export function displayName(name: string): string {
  const clean = name.replace(/[\r\n\t]+/g, ' ').trim();
  if (/[^\x20-\x7e]/.test(clean)) return `=?UTF-8?B?${Buffer.from(clean).toString('base64')}?=`;
  if (/^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~ ]*$/.test(clean)) return clean;
  return `"${clean.replace(/(["\\])/g, '\\$1')}"`;
}

// ------------------------------------------------------------------ input

const LF = 0x0a;
const CR = 0x0d;
/** A longer line is passed on in pieces: it cannot be a header or a lone dot. */
const LINE_PIECE = 1024 * 1024;
/** Header section kept in memory for -t and From:; what follows is body. */
const HEADER_LIMIT = 1024 * 1024;

interface Line { bytes: Buffer; complete: boolean }

/** Input split at LF. The last line needs no LF; a line too long comes in pieces (complete only on the last). */
async function* linesOf(input: Readable): AsyncGenerator<Line> {
  let pending: Buffer = Buffer.alloc(0);
  for await (const chunk of input as AsyncIterable<Buffer>) {
    let buf = pending.length ? Buffer.concat([pending, chunk]) : chunk;
    let start = 0;
    for (let nl = buf.indexOf(LF, start); nl >= 0; nl = buf.indexOf(LF, start)) {
      yield { bytes: buf.subarray(start, nl), complete: true };
      start = nl + 1;
    }
    buf = buf.subarray(start);
    while (buf.length > LINE_PIECE) {
      yield { bytes: buf.subarray(0, LINE_PIECE), complete: false };
      buf = buf.subarray(LINE_PIECE);
    }
    pending = Buffer.from(buf);
  }
  if (pending.length) yield { bytes: pending, complete: true };
}

/** A line's bytes with CRLF endings: its own CR before LF dropped, any other lone CR made a line break. */
function crlf(line: Line): Buffer {
  let b = line.bytes;
  if (line.complete && b.length && b[b.length - 1] === CR) b = b.subarray(0, b.length - 1);
  const out = b.includes(CR) ? Buffer.from(b.toString('latin1').replace(/\r/g, '\r\n'), 'latin1') : b;
  return line.complete ? Buffer.concat([out, Buffer.from('\r\n')]) : out;
}

function isLoneDot(line: Line, atLineStart: boolean): boolean {
  if (!line.complete || !atLineStart) return false;
  const b = line.bytes;
  return (b.length === 1 && b[0] === 0x2e) || (b.length === 2 && b[0] === 0x2e && b[1] === CR);
}

/** One header field: its name and its physical lines (CRLF-terminated). */
interface HeaderField { name: string; lines: Buffer[] }

const HEADER_START = /^([\x21-\x39\x3b-\x7e]+)[ \t]*:/;

function headerValue(f: HeaderField): string {
  const text = Buffer.concat(f.lines).toString('utf8');
  return text.slice(text.indexOf(':') + 1).replace(/\r\n([ \t])/g, '$1').trim();
}

/** Buffered writes to the maildrop file. */
class FileWriter {
  private chunks: Buffer[] = [];
  private size = 0;
  constructor(private fh: fsp.FileHandle) {}
  async write(b: Buffer): Promise<void> {
    this.chunks.push(b);
    this.size += b.length;
    if (this.size >= 256 * 1024) await this.flush();
  }
  async flush(): Promise<void> {
    if (!this.size) return;
    const all = Buffer.concat(this.chunks);
    this.chunks = [];
    this.size = 0;
    await this.fh.write(all, 0, all.length);
  }
}

export interface Submitted { file: string; recipients: number }

/**
 * Read the message, apply -t, dot handling and From:, and leave it in maildrop/:
 * written under a temporary name, fsynced, then renamed to its final name.
 */
export async function submit(o: SendmailOptions, input: Readable): Promise<Submitted> {
  let config: MainConfig;
  try { config = MainConfig.load(o.configDir); } catch (e) { throw new SendmailError((e as Error).message, EX_CONFIG); }
  // authorized_submit_users: pickup enforces it by the file's owner; refuse early with the reason
  const refusal = submitRefusal(config, process.getuid!(), lookupSystemUser(process.getuid!())?.name ?? 'unknown');
  if (refusal) throw new SendmailError(refusal, EX_NOPERM);
  const myorigin = config.get('myorigin');
  const spool = new Spool(config.get('queue_directory'));
  for (const r of o.recipients) {
    const bad = envelopeAddressProblem(r);
    if (bad) throw new SendmailError(`bad recipient address "${r}": ${bad}`, EX_USAGE);
  }
  if (o.sender !== null) {
    const bad = envelopeAddressProblem(o.sender, true);
    if (bad) throw new SendmailError(`bad sender address "${o.sender}": ${bad}`, EX_USAGE);
  }
  if (!o.extract && !o.recipients.length) throw new SendmailError('no recipients specified', EX_USAGE);

  const dir = spool.dir('maildrop');
  const name = newQueueId();
  const temp = path.join(dir, `.${name}`);
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(temp, 'wx', 0o644);
  } catch (e) {
    throw new SendmailError(`cannot create a file in ${dir}: ${(e as Error).message}`, EX_TEMPFAIL);
  }
  try {
    // readable by pickup, which runs as the queue owner, whatever our umask
    await fh.chmod(0o644);
    const out = new FileWriter(fh);
    const headers: HeaderField[] = [];
    let headerBytes = 0;
    let atLineStart = true;
    // one iterator for header and body: a for-await that breaks would close it
    const lines = linesOf(input)[Symbol.asyncIterator]();
    let firstBody: Line | null = null;
    let ended = false;
    for (let r = await lines.next(); !r.done; r = await lines.next()) {
      const line = r.value;
      if (!o.ignoreDots && isLoneDot(line, atLineStart)) { ended = true; break; }
      atLineStart = line.complete;
      const text = line.bytes.toString('latin1');
      if (line.complete && headerBytes + line.bytes.length < HEADER_LIMIT) {
        if (HEADER_START.test(text)) { headers.push({ name: HEADER_START.exec(text)![1].toLowerCase(), lines: [crlf(line)] }); headerBytes += line.bytes.length; continue; }
        if (/^[ \t]/.test(text) && headers.length) { headers[headers.length - 1].lines.push(crlf(line)); headerBytes += line.bytes.length; continue; }
      }
      firstBody = line; // the empty line that ends the headers, or the first line of a body without one
      break;
    }

    const recipients = [...o.recipients];
    if (o.extract) {
      for (const f of headers) if (f.name === 'to' || f.name === 'cc' || f.name === 'bcc') recipients.push(...addressesIn(headerValue(f)));
      if (!recipients.length) throw new SendmailError('no recipient addresses found in the message header (-t)', EX_USAGE);
      for (const r of recipients) {
        const bad = envelopeAddressProblem(r);
        if (bad) throw new SendmailError(`bad recipient address "${r}" in the message header: ${bad}`, EX_DATAERR);
      }
    }
    const kept = o.extract ? headers.filter((f) => f.name !== 'bcc') : headers;
    // the null sender (-f "<>") still gets a From: naming the user
    const fromAddress = qualifyAddress(o.sender || loginName(), myorigin);
    const added: string[] = [];
    if (!headers.some((f) => f.name === 'from')) {
      added.push(o.fullname ? `From: ${displayName(o.fullname)} <${fromAddress}>` : `From: ${fromAddress}`);
    }

    const header: MaildropHeader = { maildrop: 1, sender: o.sender, recipients: [...new Set(recipients)] };
    if (o.fullname !== undefined) header.fullname = o.fullname;
    if (o.extract) header.extract = true;
    if (o.ignoreDots) header.ignoreDots = true;
    if (o.notify) header.notify = o.notify;
    if (o.ret) header.ret = o.ret;
    if (o.envid) header.envid = o.envid;
    await out.write(formatMaildropHeader(header));
    for (const f of kept) for (const l of f.lines) await out.write(l);
    for (const a of added) await out.write(Buffer.from(`${a}\r\n`));
    // the empty line between header and body, whether the input had one or not
    await out.write(Buffer.from('\r\n'));
    if (firstBody && !(firstBody.complete && crlf(firstBody).length === 2)) {
      await out.write(crlf(firstBody));
      atLineStart = firstBody.complete;
    } else atLineStart = true;
    if (!ended && firstBody) {
      for (let r = await lines.next(); !r.done; r = await lines.next()) {
        const line = r.value;
        if (!o.ignoreDots && isLoneDot(line, atLineStart)) break;
        atLineStart = line.complete;
        await out.write(crlf(line));
      }
    }
    await out.flush();
    await fh.sync();
    await fh.close();
    const final = path.join(dir, name);
    await fsp.rename(temp, final);
    // only the queue owner may read maildrop/: for anyone else the directory fsync is best effort
    await fsyncDir(dir).catch(() => undefined);
    // wake pickup now; it polls maildrop/ anyway, and only root and the queue owner may reach its socket
    await requestJson(spool.privateSocket('pickup'), { type: 'trigger' }, 2000).catch(() => undefined);
    return { file: final, recipients: header.recipients.length };
  } catch (e) {
    await fh.close().catch(() => undefined);
    await fsp.unlink(temp).catch(() => undefined);
    if (e instanceof SendmailError) throw e;
    throw new SendmailError(`cannot write the message to ${dir}: ${(e as Error).message}`, EX_TEMPFAIL);
  }
}

/** `sendmail -bp`: the same listing as `postern queue list`. */
async function listQueue(o: SendmailOptions): Promise<number> {
  let config: MainConfig;
  try { config = MainConfig.load(o.configDir); } catch (e) { throw new SendmailError((e as Error).message, EX_CONFIG); }
  const spool = new Spool(config.get('queue_directory'));
  let entries;
  try { entries = await queueEntries(spool); } catch (e) { throw new SendmailError((e as Error).message, 1); }
  process.stdout.write(formatMailq(entries));
  return 0;
}

export async function main(argv: string[]): Promise<number> {
  process.title = 'sendmail';
  try {
    const o = parseSendmailArgs(argv);
    for (const w of o.warnings) process.stderr.write(`sendmail: warning: ${w}\n`);
    if (o.mode === 'list') return await listQueue(o);
    await submit(o, process.stdin);
    return 0;
  } catch (e) {
    const code = e instanceof SendmailError ? e.exitCode : EX_TEMPFAIL;
    process.stderr.write(`sendmail: fatal: ${(e as Error).message}\n`);
    return code;
  }
}
