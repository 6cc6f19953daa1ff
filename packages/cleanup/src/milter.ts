/**
 * non_smtpd_milters: cleanup runs the milter session for mail that did not
 * come over SMTP (postern sendmail, through pickup), as Postfix's cleanup
 * does: an emulated connect from localhost [127.0.0.1], HELO localhost, the
 * envelope, then the message as it is written to the queue file (without our
 * Received:, as smtpd's milters see it), header field by header field and the
 * body in chunks, each awaited (the milter's pace is the backpressure). Their
 * edits go the way smtpd's do (milter-edits.ts). Bounces and notices (origin
 * bounce/local) never reach it (the caller decides).
 */
import {
  connectMilter, MilterSession, MilterSettings, MilterError, MilterVerdict, MilterEdit, MilterReply, MacroSource,
  Envelope, MainConfig, Logger, MilterEditsRequest,
} from '@postern/common';
import { ScratchBody } from './milter-edits.js';

/** The milters' joint verdict on one message. */
export type MilterOutcome =
  | { action: 'accept' }
  | { action: 'reject' | 'tempfail'; reply: MilterReply; milter: string }
  | { action: 'discard'; milter: string };

/** Postfix's texts when a milter refuses without a reply of its own. */
const DEFAULT_REPLY = {
  reject: { code: 550, enhanced: '5.7.1', text: 'Command rejected' },
  tempfail: { code: 451, enhanced: '4.7.1', text: 'Service unavailable - try again later' },
};

interface Active { settings: MilterSettings; session: MilterSession }

/** The milters' verdict and, when they let the message through, their edits in smtpd's form. */
export interface MilterResult {
  outcome: MilterOutcome;
  /** Header, recipient and sender edits and a quarantine reason (hold), or null when there are none. */
  edits: MilterEditsRequest | null;
  /** A replacement body was written to the scratch file. */
  bodyReplaced: boolean;
}

export class CleanupMilters {
  private active: Active[] = [];
  private outcome: MilterOutcome | null = null;
  /** The header section (as the client wrote it, fixed up) until its empty line has been seen. */
  private head: Buffer[] = [];
  private headLen = 0;
  private inBody = false;
  /** A milter that failed with default action quarantine: the reason for hold/. */
  private quarantine: string | undefined;

  private constructor(private readonly env: Envelope, private readonly macros: MacroSource, private readonly log: Logger,
    private readonly headLimit: number) {}

  /**
   * Connects to every milter of non_smtpd_milters and sends the emulated
   * connect, HELO, MAIL, RCPTs and DATA. A milter that fails gets its default
   * action; a verdict other than continue ends the session for the message.
   */
  static async open(settings: MilterSettings[], env: Envelope, config: MainConfig, log: Logger, baseDir: string): Promise<CleanupMilters> {
    const rcptNow = { addr: '' };
    const values: Record<string, string> = {
      i: env.id, j: config.get('myhostname'), v: config.get('milter_macro_v'), _: 'localhost [127.0.0.1]',
      '{daemon_name}': config.get('milter_macro_daemon_name'), '{daemon_addr}': '127.0.0.1',
      '{mail_addr}': env.sender, '{mail_mailer}': 'local',
    };
    const macros: MacroSource = (name) => (name === '{rcpt_addr}' ? rcptNow.addr : values[name]);
    const m = new CleanupMilters(env, macros, log, config.int('header_size_limit') + 64 * 1024);
    for (const s of settings) {
      if (m.outcome) break;
      let session: MilterSession;
      try {
        session = await connectMilter(s.spec, s.timeouts, { protocol: s.protocol, macros: s.macros, baseDir });
      } catch (e) {
        m.failed(s, e);
        continue;
      }
      m.active.push({ settings: s, session });
    }
    await m.each((a) => a.session.connectEvent('localhost', '127.0.0.1', 0, macros));
    await m.each((a) => a.session.helo('localhost', macros));
    await m.each((a) => a.session.mail([`<${env.sender}>`], macros));
    for (const r of env.recipients) {
      rcptNow.addr = r.address;
      await m.each((a) => a.session.rcpt([`<${r.address}>`], macros));
    }
    await m.each((a) => a.session.data(macros));
    return m;
  }

  /** A milter could not be used: its default action decides (Postfix's milter_default_action). */
  private failed(s: MilterSettings, e: unknown): void {
    const err = (e as Error).message;
    const action = s.defaultAction;
    this.log.warn({ queue_id: this.env.id, milter: s.spec.name, err, default_action: action }, 'milter failed; applying its default action');
    if (action === 'reject') this.outcome = { action: 'reject', reply: DEFAULT_REPLY.reject, milter: s.spec.name };
    else if (action === 'tempfail') this.outcome = { action: 'tempfail', reply: DEFAULT_REPLY.tempfail, milter: s.spec.name };
    // accept: go on without this milter; quarantine: the same, and the message goes to hold/ (as smtpd's)
    else if (action === 'quarantine') this.quarantine ??= `milter ${s.spec.name} failed: ${err}`.slice(0, 255);
  }

  /** One event to every milter still in the conversation, in order; the first verdict other than continue decides. */
  private async each(fn: (a: Active) => Promise<MilterVerdict>): Promise<void> {
    for (const a of this.active.slice()) {
      if (this.outcome) return;
      let v: MilterVerdict;
      try { v = await fn(a); } catch (e) {
        if (!(e instanceof MilterError)) throw e;
        this.drop(a);
        this.failed(a.settings, e);
        continue;
      }
      this.verdict(a, v);
    }
  }

  private verdict(a: Active, v: MilterVerdict): void {
    if (v.action === 'continue') return;
    if (v.action === 'accept') { this.drop(a); return; }
    if (v.action === 'discard') this.outcome = { action: 'discard', milter: a.settings.spec.name };
    else this.outcome = { action: v.action, reply: v.reply ?? DEFAULT_REPLY[v.action], milter: a.settings.spec.name };
  }

  private drop(a: Active): void {
    this.active = this.active.filter((x) => x !== a);
    a.session.close();
  }

  /** Whether any milter still wants the message. */
  get busy(): boolean { return !this.outcome && this.active.length > 0; }

  /** Message bytes as written to the queue file. */
  async push(chunk: Buffer): Promise<void> {
    if (!this.busy || chunk.length === 0) return;
    if (this.inBody) return this.body(chunk);
    this.head.push(chunk);
    this.headLen += chunk.length;
    const all = Buffer.concat(this.head);
    const blank = findBlankLine(all);
    if (blank < 0 && this.headLen <= this.headLimit) { this.head = [all]; return; }
    // cleanup's header section is bounded (header_size_limit): past it, what follows is body
    const end = blank < 0 ? all.length : blank;
    this.head = [];
    this.inBody = true;
    await this.headers(all.subarray(0, end));
    if (end < all.length) await this.body(all.subarray(end));
  }

  private async headers(section: Buffer): Promise<void> {
    for (const f of splitFields(section.toString('utf8'))) {
      await this.each((a) => a.session.header(f.name, f.value));
    }
    await this.each((a) => a.session.eoh(this.macros));
  }

  private async body(chunk: Buffer): Promise<void> {
    await this.each((a) => a.session.body(chunk));
  }

  /** End of message: each milter's edits and verdict; a replacement body goes to scratch (the last milter's wins). */
  async end(scratch: ScratchBody): Promise<MilterResult> {
    if (!this.inBody && this.busy) {
      this.inBody = true;
      await this.headers(Buffer.concat(this.head));
    }
    const edits: MilterEdit[] = [];
    let bodyReplaced = false;
    for (const a of this.active.slice()) {
      if (this.outcome) break;
      let r: { verdict: MilterVerdict; edits: MilterEdit[] };
      let started = false;
      try {
        r = await a.session.eom(this.macros, async (chunk) => {
          if (!started) { started = true; await scratch.start(); }
          await scratch.write(chunk);
        });
      } catch (e) {
        if (!(e instanceof MilterError)) throw e;
        this.drop(a);
        this.failed(a.settings, e);
        continue;
      }
      bodyReplaced ||= started;
      edits.push(...r.edits);
      this.verdict(a, r.verdict);
    }
    if (this.quarantine) edits.push({ type: 'quarantine', reason: this.quarantine });
    return { outcome: this.outcome ?? { action: 'accept' }, edits: toRequest(edits), bodyReplaced };
  }

  /** The message is over (committed, refused or broken): every session is told and closed. */
  async close(aborted: boolean): Promise<void> {
    for (const a of this.active) {
      if (aborted) await a.session.abortMessage();
      a.session.close();
    }
    this.active = [];
  }
}

/** Where the body starts: just after the first empty line (CRLF or LF), or -1. */
function findBlankLine(b: Buffer): number {
  if (b.length >= 2 && b[0] === 13 && b[1] === 10) return 2;
  if (b.length >= 1 && b[0] === 10) return 1;
  const crlf = b.indexOf('\r\n\r\n');
  const lf = b.indexOf('\n\n');
  if (crlf >= 0 && (lf < 0 || crlf + 2 <= lf)) return crlf + 4;
  return lf >= 0 ? lf + 2 : -1;
}

/** Header fields of a header section (its empty line included or not): name, and value with its folding. */
function splitFields(text: string): { name: string; value: string }[] {
  const out: { name: string; value: string }[] = [];
  for (const line of text.split(/\r?\n/)) {
    if (line === '') continue;
    if (/^[ \t]/.test(line) && out.length) { out[out.length - 1].value += `\r\n${line}`; continue; }
    const i = line.indexOf(':');
    if (i <= 0) continue; // not a field (cleanup ends the header section before such a line)
    out.push({ name: line.slice(0, i).trimEnd(), value: line.slice(i + 1) });
  }
  return out;
}

/** Milter edits in the form smtpd sends them to cleanup (schema milterEditsRequest), so both are applied alike. */
function toRequest(edits: MilterEdit[]): MilterEditsRequest | null {
  if (!edits.length) return null;
  const req: MilterEditsRequest = { type: 'milter' };
  const headers: NonNullable<MilterEditsRequest['headers']> = [];
  const strip = (a: string) => a.replace(/^<(.*)>$/, '$1');
  for (const e of edits) {
    if (e.type === 'add-header') headers.push({ op: 'add', name: e.name, value: e.value.replace(/\r?\n/g, '\r\n') });
    else if (e.type === 'insert-header') headers.push({ op: 'insert', index: e.index, name: e.name, value: e.value.replace(/\r?\n/g, '\r\n') });
    else if (e.type === 'change-header') headers.push({ op: 'change', index: e.index, name: e.name, value: e.value.replace(/\r?\n/g, '\r\n') });
    else if (e.type === 'add-rcpt') (req.add_recipients ??= []).push(strip(e.address));
    else if (e.type === 'delete-rcpt') (req.delete_recipients ??= []).push(strip(e.address));
    else if (e.type === 'change-from') req.sender = strip(e.address);
    else if (e.type === 'quarantine') req.hold = e.reason.slice(0, 255) || 'milter quarantine';
  }
  if (headers.length) req.headers = headers;
  return req;
}
