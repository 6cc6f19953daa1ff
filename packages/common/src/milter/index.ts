/**
 * The milter client core (Sendmail milter protocol 6, as Postfix speaks it).
 *
 * Exported API:
 * - `parseMilterList(value)`: a smtpd_milters / non_smtpd_milters value ->
 *   `MilterSpec[]` (`unix:/path`, `inet:host:port`, `{ inet:h:p, default_action=accept,
 *   connect_timeout=10s, command_timeout=.., content_timeout=.., protocol=6 }`); throws
 *   an Error naming the problem. `checkMilterList` is its params.ts check.
 * - `milterSettings(config, param)`: the specs of that parameter with main.cf's
 *   timeouts, macro lists, protocol and default action resolved per milter.
 * - `connectMilter(spec, timeouts, { protocol, macros, baseDir })` -> `MilterSession`
 *   (connected, options negotiated). Its events, each resolving to a `MilterVerdict`
 *   (`continue | accept | reject | tempfail | discard`, reject/tempfail with the
 *   milter's own `reply` when it sent SMFIR_REPLYCODE):
 *   `connectEvent(hostname, address, port, macros)`, `helo(name, macros)`,
 *   `mail(['<from>', 'SIZE=..'], macros)`, `rcpt(['<to>'], macros)`, `data(macros)`,
 *   `header(name, value)`, `eoh(macros)`, `body(chunk)` (cut into <= 65535-byte
 *   packets; call it as the bytes arrive), and
 *   `eom(macros, onReplacementBodyChunk)` -> `{ verdict, edits: MilterEdit[] }`
 *   (add/insert/change(delete when value is '')-header, add-rcpt, delete-rcpt,
 *   change-from, quarantine; replacement body chunks are handed to the callback as
 *   they arrive). `abortMessage()` (SMFIC_ABORT), `close()` (SMFIC_QUIT).
 *   `macros` is a lookup `(name) => value | undefined` (`j`, `{daemon_name}`, ...);
 *   only the names in that stage's list (or what the milter asked for) are sent.
 * - Every failure (unreachable, timeout, protocol error, bad packet) rejects with
 *   `MilterError`: the caller applies the milter's `defaultAction`.
 * - `applyHeaderEdits(fields, edits)`: how header edits change a list of header
 *   fields (shared by whoever applies them to the message).
 */
import type { MainConfig } from '../config/config.js';
import { parseMilterList, MilterSpec, MilterAction } from './spec.js';
import type { MacroLists, MilterTimeouts, MilterEdit } from './session.js';

export * from './spec.js';
export * from './protocol.js';
export * from './session.js';

export interface MilterSettings {
  spec: MilterSpec;
  timeouts: MilterTimeouts;
  protocol: number;
  macros: MacroLists;
  defaultAction: MilterAction;
}

const words = (v: string) => v.split(/[\s,]+/).filter(Boolean);

/** The milters of `param` (smtpd_milters or non_smtpd_milters), each with its settings resolved. */
export function milterSettings(config: MainConfig, param: 'smtpd_milters' | 'non_smtpd_milters'): MilterSettings[] {
  const macros: MacroLists = {
    connect: words(config.get('milter_connect_macros')),
    helo: words(config.get('milter_helo_macros')),
    mail: words(config.get('milter_mail_macros')),
    rcpt: words(config.get('milter_rcpt_macros')),
    data: words(config.get('milter_data_macros')),
    eoh: words(config.get('milter_end_of_header_macros')),
    eom: words(config.get('milter_end_of_data_macros')),
  };
  return parseMilterList(config.get(param)).map((spec) => ({
    spec,
    timeouts: {
      connectMs: (spec.connectTimeout ?? config.seconds('milter_connect_timeout')) * 1000,
      commandMs: (spec.commandTimeout ?? config.seconds('milter_command_timeout')) * 1000,
      contentMs: (spec.contentTimeout ?? config.seconds('milter_content_timeout')) * 1000,
    },
    protocol: spec.protocol ?? Number(config.get('milter_protocol')),
    macros,
    defaultAction: spec.defaultAction ?? (config.get('milter_default_action') as MilterAction),
  }));
}

/** A header field as the milter edits see it: name and value (value without the colon, folding as CRLF). */
export interface HeaderField { name: string; value: string }

/**
 * Apply header edits as sendmail/Postfix do: add appends, insert puts the
 * field before the index'th field (0: first), change replaces the index'th
 * (1-based) field of that name (case-insensitive) and an empty value deletes
 * it; a change of a field that is not there adds it (Postfix).
 */
export function applyHeaderEdits(fields: HeaderField[], edits: MilterEdit[]): HeaderField[] {
  const out = fields.slice();
  for (const e of edits) {
    if (e.type === 'add-header') out.push({ name: e.name, value: e.value });
    else if (e.type === 'insert-header') out.splice(Math.min(e.index, out.length), 0, { name: e.name, value: e.value });
    else if (e.type === 'change-header') {
      let n = 0;
      const at = out.findIndex((f) => f.name.toLowerCase() === e.name.toLowerCase() && ++n === Math.max(e.index, 1));
      if (at < 0) { if (e.value) out.push({ name: e.name, value: e.value }); }
      else if (e.value === '') out.splice(at, 1);
      else out[at] = { name: out[at].name, value: e.value };
    }
  }
  return out;
}
