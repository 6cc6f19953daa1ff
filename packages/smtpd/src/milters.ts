/**
 * smtpd's milters (smtpd_milters): one MilterSession per configured milter per
 * SMTP session, fed the events of the session as they happen (connect; HELO
 * and MAIL at MAIL FROM; RCPT; DATA, the header fields and body chunks as the
 * message streams in; end of message before the final reply). A milter's
 * verdict becomes the SMTP reply; a milter that fails (unreachable, timeout,
 * protocol error) gets its default action (milter_default_action).
 */
import { SMTPServerSession, SMTPServerAddress } from 'smtp-server';
import {
  MainConfig, Logger, SmtpError, smtpError, milterSettings, MilterSettings, connectMilter, MilterSession,
  MilterVerdict, MilterEdit, MilterAction, MacroSource, SMFIP, MilterError,
} from '@postern/common';

interface Member {
  settings: MilterSettings;
  m: MilterSession | null;
  /** The milter failed with default action tempfail or reject: every later event gets this reply. */
  failed: SmtpError | null;
  /** SMFIR_ACCEPT at connect or HELO: nothing more for this session. */
  doneSession: boolean;
  /** SMFIR_ACCEPT (or a reject/discard already given) for this message: nothing more for it. */
  doneMessage: boolean;
}

/** What the milters decided about one message, at its end. */
export interface MilterOutcome {
  refuse?: SmtpError;
  discard?: { milter: string };
  edits: MilterEdit[];
  /** A milter replaced the body: its chunks went to onBody. */
  bodyReplaced: boolean;
  quarantine?: { milter: string; reason: string };
}

const TEMPFAIL = () => smtpError(451, '4.7.1', 'Service unavailable - try again later');
const REJECT = () => smtpError(550, '5.7.1', 'Command rejected');

function replyFor(v: MilterVerdict): SmtpError | null {
  if (v.action === 'reject') return v.reply ? smtpError(v.reply.code, v.reply.enhanced, v.reply.text) : REJECT();
  if (v.action === 'tempfail') return v.reply ? smtpError(v.reply.code, v.reply.enhanced, v.reply.text) : TEMPFAIL();
  return null;
}

type Stage = 'connect' | 'helo' | 'mail' | 'rcpt' | 'data' | 'header' | 'eoh' | 'body' | 'eom';

export class SessionMilters {
  private heloSent: string | null = null;
  private heloRefusal: SmtpError | null = null;
  private connectRefusal: SmtpError | null = null;
  private inMessage = false;
  /** This message is to be discarded (a milter said so at MAIL, RCPT, DATA or in the body). */
  discard: { milter: string } | null = null;
  /** default_action = quarantine for a milter that failed: the message goes to hold/. */
  quarantine: { milter: string; reason: string } | null = null;
  /** Macro values known only later (the queue id, the current recipient). */
  readonly extra = new Map<string, string>();

  private constructor(private readonly members: Member[], private readonly log: Logger, private readonly session: SMTPServerSession,
    private readonly config: MainConfig, private readonly client: () => { name: string; label: string }) {}

  /** Connect to every milter of smtpd_milters and send the connect event; null when there are none. */
  static async start(config: MainConfig, log: Logger, session: SMTPServerSession, baseDir: string,
    client: () => { name: string; label: string }): Promise<SessionMilters | null> {
    let list: MilterSettings[];
    try { list = milterSettings(config, 'smtpd_milters'); } catch (e) {
      // checked at start and reload; a bad value here means no milter, loudly
      log.error({ err: (e as Error).message }, 'smtpd_milters: bad value; no milters used');
      return null;
    }
    if (!list.length) return null;
    const members: Member[] = list.map((settings) => ({ settings, m: null, failed: null, doneSession: false, doneMessage: false }));
    const s = new SessionMilters(members, log, session, config, client);
    await Promise.all(members.map(async (mb) => {
      try {
        mb.m = await connectMilter(mb.settings.spec, mb.settings.timeouts, { protocol: mb.settings.protocol, macros: mb.settings.macros, baseDir });
      } catch (e) {
        s.failure(mb, 'connect', e as Error);
      }
    }));
    const c = client();
    const refused = await s.each('connect', (m) => m.connectEvent(c.name, session.remoteAddress, session.remotePort, s.macros));
    if (refused && !('discard' in refused)) s.connectRefusal = refused;
    return s;
  }

  /** The macro values of this session (Postfix's names). */
  readonly macros: MacroSource = (name) => {
    const s = this.session;
    const c = this.client();
    const tls = (s as any).tlsOptions as { name?: string; version?: string; standardName?: string } | undefined;
    const user = s.user ? String(s.user) : undefined;
    switch (name) {
      case 'j': return this.config.get('myhostname');
      case '_': return `${c.name} [${s.remoteAddress}]`;
      case '{daemon_name}': return this.config.get('milter_macro_daemon_name');
      case '{daemon_addr}': return s.localAddress;
      case '{daemon_port}': return String(s.localPort);
      case 'v': return this.config.get('milter_macro_v');
      case '{client_addr}': return s.remoteAddress;
      case '{client_port}': return String(s.remotePort);
      case '{client_name}': return c.name;
      case '{client_ptr}': return c.name;
      case '{client_connections}': return undefined;
      case '{tls_version}': return s.secure && tls ? tls.version : undefined;
      case '{cipher}': return s.secure && tls ? (tls.standardName ?? tls.name) : undefined;
      case '{auth_type}': return user ? (this.extra.get('{auth_type}') ?? undefined) : undefined;
      case '{auth_authen}': return user;
      case '{auth_author}': return undefined;
      default: return this.extra.get(name);
    }
  };

  /** A milter failed: its default action. Returns the reply for this and every later event, or null (go on without it). */
  private failure(mb: Member, stage: Stage, e: Error): void {
    const action: MilterAction = mb.settings.defaultAction;
    this.log.warn({ milter: mb.settings.spec.name, stage, err: e.message, action, client: this.client().label, queue_id: this.extra.get('i') ?? 'NOQUEUE' },
      `milter ${mb.settings.spec.name}: ${e.message}; default action ${action}`);
    mb.m?.close();
    mb.m = null;
    if (action === 'tempfail') mb.failed = TEMPFAIL();
    else if (action === 'reject') mb.failed = REJECT();
    else if (action === 'quarantine') this.quarantine ??= { milter: mb.settings.spec.name, reason: `milter ${mb.settings.spec.name} unavailable` };
  }

  private active(mb: Member): boolean { return !mb.doneSession && !mb.doneMessage && (mb.m !== null || mb.failed !== null); }

  /**
   * One event for every milter still in the conversation, in order. Returns the
   * first refusal (later milters do not see the event), a discard, or null.
   */
  private async each(stage: Stage, call: (m: MilterSession) => Promise<MilterVerdict>): Promise<SmtpError | { discard: string } | null> {
    for (const mb of this.members) {
      if (!this.active(mb)) continue;
      if (mb.failed) return mb.failed;
      let v: MilterVerdict;
      try { v = await call(mb.m!); } catch (e) {
        this.failure(mb, stage, e as Error);
        if (mb.failed) return mb.failed;
        continue;
      }
      const refused = this.apply(mb, stage, v);
      if (refused) return refused;
    }
    return null;
  }

  private apply(mb: Member, stage: Stage, v: MilterVerdict): SmtpError | { discard: string } | null {
    if (v.action === 'continue') return null;
    if (v.action === 'accept') {
      if (stage === 'connect' || stage === 'helo') mb.doneSession = true;
      else mb.doneMessage = true;
      return null;
    }
    if (v.action === 'discard') {
      if (stage === 'connect' || stage === 'helo') return null; // nothing to discard yet (Postfix ignores it too)
      mb.doneMessage = true;
      return { discard: mb.settings.spec.name };
    }
    const reply = replyFor(v)!;
    this.log.info({ milter: mb.settings.spec.name, stage, client: this.client().label, queue_id: this.extra.get('i') ?? 'NOQUEUE', status: 'reject', dsn: reply.enhanced },
      `milter-reject: ${stage.toUpperCase()} from ${this.client().label}: ${reply.responseCode} ${reply.enhanced} ${reply.message.slice(reply.enhanced.length + 1)}`);
    // a refusal of a recipient is that recipient's; of anything else, the message's
    if (stage !== 'rcpt') mb.doneMessage = true;
    return reply;
  }

  /** A new transaction: forget the last one (SMFIC_ABORT if it never ended), send HELO if new, then MAIL. */
  async mailFrom(address: SMTPServerAddress): Promise<SmtpError | null> {
    await this.endMessage(true);
    this.inMessage = true;
    if (this.connectRefusal) return this.connectRefusal;
    const helo = this.session.hostNameAppearsAs || '';
    if (helo !== this.heloSent) {
      this.heloSent = helo;
      const r = await this.each('helo', (m) => m.helo(helo, this.macros));
      this.heloRefusal = r && !('discard' in r) ? r : null;
    }
    if (this.heloRefusal) return this.heloRefusal;
    // smtp-server records the sender only after MAIL is accepted: the macros take it from here
    const from = address.address;
    this.extra.set('{mail_addr}', from);
    if (from.includes('@')) this.extra.set('{mail_host}', from.slice(from.lastIndexOf('@') + 1));
    this.extra.set('{mail_mailer}', 'smtp');
    const args = [`<${from}>`, ...Object.entries((address as any).args ?? {}).map(([k, v]) => (v === true ? k : `${k}=${v}`))];
    const r = await this.each('mail', (m) => m.mail(args, this.macros));
    if (r && 'discard' in r) { this.discard = { milter: r.discard }; return null; }
    return r;
  }

  async rcptTo(address: SMTPServerAddress): Promise<SmtpError | null> {
    this.extra.set('{rcpt_addr}', address.address);
    const at = address.address.lastIndexOf('@');
    if (at >= 0) this.extra.set('{rcpt_host}', address.address.slice(at + 1)); else this.extra.delete('{rcpt_host}');
    this.extra.set('{rcpt_mailer}', 'smtp');
    const args = [`<${address.address}>`, ...Object.entries((address as any).args ?? {}).map(([k, v]) => (v === true ? k : `${k}=${v}`))];
    const r = await this.each('rcpt', (m) => m.rcpt(args, this.macros));
    if (r && 'discard' in r) { this.discard = { milter: r.discard }; return null; }
    return r;
  }

  /** The message's stream of events from DATA to the end of message. */
  message(queueId: string): MessageMilters {
    this.extra.set('i', queueId);
    return new MessageMilters(this, this.config.int('message_size_limit'));
  }

  /** @internal for MessageMilters */
  eachEvent(stage: Stage, call: (m: MilterSession) => Promise<MilterVerdict>) { return this.each(stage, call); }
  /** @internal */
  get list(): Member[] { return this.members; }
  /** @internal */
  failMember(mb: Member, stage: Stage, e: Error) { this.failure(mb, stage, e); }
  /** @internal */
  logEdit(mb: Member, what: string) {
    this.log.warn({ milter: mb.settings.spec.name, queue_id: this.extra.get('i') ?? 'NOQUEUE' }, `milter ${mb.settings.spec.name}: ${what}`);
  }
  /** @internal */
  verdict(mb: Member, stage: Stage, v: MilterVerdict) { return this.apply(mb, stage, v); }

  /** The transaction is over (queued, refused, RSET): milters that did not see its end forget it. */
  async endMessage(abort: boolean): Promise<void> {
    if (this.inMessage && abort) {
      for (const mb of this.members) if (mb.m && !mb.doneSession) await mb.m.abortMessage();
    }
    this.inMessage = false;
    this.discard = null;
    this.quarantine = null;
    for (const mb of this.members) mb.doneMessage = false;
    for (const k of ['i', '{rcpt_addr}', '{rcpt_host}', '{rcpt_mailer}', '{mail_addr}', '{mail_host}', '{mail_mailer}']) this.extra.delete(k);
  }

  close(): void {
    for (const mb of this.members) { mb.m?.close(); mb.m = null; }
  }
}

/** CRLF-folded header value -> what the wire wants is done by MilterSession; this splits the header section. */
function splitFields(section: string): { name: string; value: string }[] {
  const out: { name: string; value: string }[] = [];
  for (const line of section.split('\r\n')) {
    if (!line) continue;
    if (/^[ \t]/.test(line) && out.length) out[out.length - 1].value += `\r\n${line}`;
    else {
      const c = line.indexOf(':');
      out.push({ name: c > 0 ? line.slice(0, c).trimEnd() : line, value: c > 0 ? line.slice(c + 1) : '' });
    }
  }
  return out;
}

/** The header section is at most this long for the milters; beyond it the rest is body (as cleanup's header_size_limit). */
const HEADER_CAP = 1024 * 1024;

/**
 * One message through the milters: DATA, then the bytes as they stream
 * (header fields once the header section is complete, body chunks as they
 * come), then the end of message.
 */
export class MessageMilters {
  private head: Buffer[] = [];
  private headLength = 0;
  private inBody = false;
  private refused: SmtpError | null = null;

  constructor(private readonly s: SessionMilters, private readonly sizeLimit: number) {}

  private note(r: SmtpError | { discard: string } | null): void {
    if (!r) return;
    if ('discard' in r) this.s.discard ??= { milter: r.discard };
    else this.refused ??= r;
  }

  private get stopped(): boolean { return !!this.refused || !!this.s.discard; }

  async data(): Promise<void> {
    this.note(await this.s.eachEvent('data', (m) => m.data(this.s.macros)));
  }

  /** Message bytes as stored (CRLF). */
  async write(chunk: Buffer): Promise<void> {
    if (this.stopped) return;
    if (this.inBody) return this.body(chunk);
    this.head.push(chunk);
    this.headLength += chunk.length;
    const all = Buffer.concat(this.head);
    let end = all.indexOf('\r\n\r\n');
    let bodyStart = end + 4;
    if (all.subarray(0, 2).equals(Buffer.from('\r\n'))) { end = 0; bodyStart = 2; }
    if (end < 0 && this.headLength < HEADER_CAP) { this.head = [all]; return; }
    if (end < 0) { end = all.length; bodyStart = all.length; }
    await this.endHeaders(all.subarray(0, end).toString('latin1'));
    if (bodyStart < all.length) await this.body(all.subarray(bodyStart));
  }

  private async endHeaders(section: string): Promise<void> {
    this.inBody = true;
    this.head = [];
    for (const f of splitFields(section)) {
      this.note(await this.s.eachEvent('header', (m) => m.header(f.name, Buffer.from(f.value, 'latin1').toString('utf8'))));
      if (this.stopped) return;
    }
    this.note(await this.s.eachEvent('eoh', (m) => m.eoh(this.s.macros)));
  }

  private async body(chunk: Buffer): Promise<void> {
    if (this.stopped || !chunk.length) return;
    this.note(await this.s.eachEvent('body', (m) => m.body(chunk)));
  }

  /**
   * End of message: every milter still in the conversation gets it, in order;
   * a replacement body is handed to onBody (startBody first, once per milter
   * that replaces it) as it arrives.
   */
  async finish(startBody: () => Promise<void>, onBody: (chunk: Buffer) => Promise<void>): Promise<MilterOutcome> {
    if (!this.stopped && !this.inBody) await this.endHeaders(Buffer.concat(this.head).toString('latin1'));
    const out: MilterOutcome = { edits: [], bodyReplaced: false };
    for (const mb of this.s.list) {
      if (this.stopped) break;
      if (mb.doneSession || mb.doneMessage) continue;
      if (mb.failed) { this.refused = mb.failed; break; }
      if (!mb.m) continue;
      const m = mb.m;
      let started = false;
      let replaced = 0;
      try {
        const { verdict, edits } = await m.eom(this.s.macros, async (chunk) => {
          if (!started) { started = true; out.bodyReplaced = true; await startBody(); }
          replaced += chunk.length;
          if (this.sizeLimit && replaced > this.sizeLimit) throw new MilterError(`replacement body larger than message_size_limit (${this.sizeLimit})`);
          await onBody(chunk);
        });
        const leadspc = (m.flags & SMFIP.HDR_LEADSPC) !== 0;
        for (const e of edits) {
          if (e.type === 'quarantine') out.quarantine ??= { milter: mb.settings.spec.name, reason: e.reason };
          else if (e.type === 'add-header' || e.type === 'insert-header' || e.type === 'change-header') {
            // sendmail's convention: LF between lines; ours is CRLF, and the space after the colon is ours to add
            if (!/^[!-9;-~]{1,255}$/.test(e.name)) {
              this.s.logEdit(mb, `header name ${JSON.stringify(e.name.slice(0, 80))} is not a header field name; edit ignored`);
              continue;
            }
            let v = e.value.replace(/\r(?!\n)/g, ' ').replace(/\r?\n/g, '\r\n').replace(/\r\n(?![ \t])/g, '\r\n\t');
            if (!leadspc && v) v = ` ${v}`;
            out.edits.push({ ...e, value: v });
          } else out.edits.push(e);
        }
        this.note(this.s.verdict(mb, 'eom', verdict));
      } catch (e) {
        this.s.failMember(mb, 'eom', e as Error);
        if (mb.failed) this.refused = mb.failed;
        // half a replacement body went to cleanup: no default action makes that message whole again
        else if (started) this.refused = TEMPFAIL();
      }
    }
    if (this.refused) out.refuse = this.refused;
    if (this.s.discard) out.discard = this.s.discard;
    out.quarantine ??= this.s.quarantine ?? undefined;
    return out;
  }
}

export { TEMPFAIL as milterTempfail };

/** Each connection's milters (none when smtpd_milters is empty). */
export const milterSessions = new WeakMap<SMTPServerSession, SessionMilters>();
