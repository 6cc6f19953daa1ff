/**
 * The syntax of smtpd's restriction lists (Postfix's smtpd_*_restrictions):
 * which restriction names exist, which take an argument, and how a list is
 * read from main.cf. It lives here, not in smtpd, so master can refuse a bad
 * list at start (`main.cf:LINE: unknown restriction "x" ...`) before any
 * service runs. smtpd does the evaluation (packages/smtpd/src/restrictions.ts).
 */
import * as path from 'node:path';
import { ConfigError, MainConfig } from '../config/config.js';

/** The lists in the order smtpd evaluates them at RCPT time (smtpd_delay_reject, as Postfix's default). */
export const RESTRICTION_LISTS = [
  'smtpd_client_restrictions',
  'smtpd_helo_restrictions',
  'smtpd_sender_restrictions',
  'smtpd_relay_restrictions',
  'smtpd_recipient_restrictions',
] as const;

export type RestrictionListName = typeof RESTRICTION_LISTS[number];

/** Restriction names; `true` for those followed by a DNS zone (`reject_rbl_client zen.example[=127.0.0.2]`). */
export const RESTRICTION_NAMES: Readonly<Record<string, boolean>> = {
  permit: false,
  reject: false,
  permit_mynetworks: false,
  permit_sasl_authenticated: false,
  reject_unauth_destination: false,
  reject_unlisted_recipient: false,
  reject_unknown_reverse_client_hostname: false,
  reject_unknown_client_hostname: false,
  reject_invalid_helo_hostname: false,
  reject_non_fqdn_helo_hostname: false,
  reject_unknown_sender_domain: false,
  reject_rbl_client: true,
  reject_rhsbl_client: true,
  reject_rhsbl_sender: true,
};

export interface Restriction {
  name: string;
  /** DNS list zone, for the reject_rbl and reject_rhsbl restrictions. */
  zone?: string;
  /** `=pattern` after the zone: only these answers count as listed (Postfix's address pattern). */
  filter?: string;
}

/** Where an error in a list is reported: main.cf's line, or the master.cf line of a `-o` override. */
export interface ConfigLocation { file: string; line: number }

const ZONE = /^(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9_](?:[a-z0-9_-]{0,62}))*\.?$/i;

/** One list as written in main.cf (commas or spaces between words, a zone after the restrictions that need one). */
export function parseRestrictionList(config: MainConfig, name: RestrictionListName, where?: ConfigLocation): Restriction[] {
  const at = where ?? { file: config.file, line: config.lineOf(name) };
  const fail = (problem: string) => { throw new ConfigError(at.file, at.line, `${problem} in ${name}`); };
  const words = config.list(name);
  const out: Restriction[] = [];
  for (let i = 0; i < words.length; i++) {
    const word = words[i].toLowerCase();
    if (!(word in RESTRICTION_NAMES)) fail(`unknown restriction "${words[i]}"`);
    if (!RESTRICTION_NAMES[word]) { out.push({ name: word }); continue; }
    const arg = words[++i];
    if (arg === undefined || arg.toLowerCase() in RESTRICTION_NAMES) fail(`${word} needs a DNS list zone after it`);
    const eq = arg.indexOf('=');
    const zone = (eq < 0 ? arg : arg.slice(0, eq)).toLowerCase().replace(/\.$/, '');
    if (!ZONE.test(zone)) fail(`${word}: "${zone}" is not a domain name`);
    const filter = eq < 0 ? undefined : arg.slice(eq + 1);
    if (filter !== undefined && !parseAddressPattern(filter)) fail(`${word} ${arg}: "${filter}" is not an address pattern (127.0.0.2, 127.0.0.[2..11] or 127.0.0.[2;4])`);
    out.push({ name: word, zone, filter });
  }
  return out;
}

/** A 4xx or 5xx reply code parameter. */
export function rejectCode(config: MainConfig, name: string, where?: ConfigLocation): number {
  const code = config.int(name);
  if (code < 400 || code > 599) {
    const at = where ?? { file: config.file, line: config.lineOf(name) };
    throw new ConfigError(at.file, at.line, `${name}: ${code} is not a 4xx or 5xx reply code`);
  }
  return code;
}

/**
 * Checks every restriction list of one smtpd listener (its main.cf view with
 * master.cf overrides); `overridden` tells where a `-o` override was written.
 */
export function checkRestrictionLists(config: MainConfig, overridden?: (name: string) => ConfigLocation | undefined): void {
  for (const name of RESTRICTION_LISTS) parseRestrictionList(config, name, overridden?.(name));
  for (const name of ['unknown_client_reject_code', 'unknown_reverse_client_reject_code']) rejectCode(config, name, overridden?.(name));
}

/** For messages about a master.cf override. */
export function masterCfLocation(configDir: string, line: number): ConfigLocation {
  return { file: path.join(configDir, 'master.cf'), line };
}

/**
 * Postfix's DNSBL reply filter: four octets, each a number, `[n..m]` or a
 * `;`-separated list of those in brackets. Returns a matcher, or null when
 * the text is not such a pattern.
 */
export function parseAddressPattern(text: string): ((address: string) => boolean) | null {
  const octets = text.split(/\.(?![^[\]]*\])/); // the dots of `[2..11]` are not octet separators
  if (octets.length !== 4) return null;
  const sets: ((n: number) => boolean)[] = [];
  const byte = (s: string) => (/^\d{1,3}$/.test(s) && parseInt(s, 10) <= 255 ? parseInt(s, 10) : null);
  for (const o of octets) {
    const m = /^\[(.+)\]$/.exec(o);
    const parts = m ? m[1].split(';') : [o];
    if (!m && parts.length !== 1) return null;
    const tests: ((n: number) => boolean)[] = [];
    for (const p of parts) {
      const range = /^(\d{1,3})\.\.(\d{1,3})$/.exec(p);
      if (range && m) {
        const lo = byte(range[1]), hi = byte(range[2]);
        if (lo === null || hi === null || lo > hi) return null;
        tests.push((n) => n >= lo && n <= hi);
        continue;
      }
      const v = byte(p);
      if (v === null) return null;
      tests.push((n) => n === v);
    }
    sets.push((n) => tests.some((t) => t(n)));
  }
  return (address: string) => {
    const b = address.split('.').map((x) => parseInt(x, 10));
    return b.length === 4 && b.every((n, i) => sets[i](n));
  };
}
