/**
 * Delivery transports for mail to our own users (`virtual_transport`,
 * `mailbox_transport`), in Postfix's syntax: `local` (Postern's own mailbox
 * service, over LMTP on private/local), `lmtp:unix:PATH` or
 * `lmtp:inet:HOST:PORT` (any LMTP server; Dovecot's above all). qmgr turns the
 * value into a next hop for the lmtp client, which connects to it; the config
 * parser checks the syntax at start so a typo is `main.cf:LINE`, not a deferral.
 */

export type LmtpTarget =
  | { kind: 'local' }
  | { kind: 'unix'; path: string }
  | { kind: 'inet'; host: string; port: number };

/** The next hop qmgr hands the lmtp client for a transport value: `local`, `unix:PATH` or `inet:HOST:PORT`. */
export function transportNexthop(value: string): string {
  const t = parseTransport(value);
  return t.kind === 'local' ? 'local' : value.trim().slice('lmtp:'.length);
}

/** A transport value (`local`, `lmtp:unix:PATH`, `lmtp:inet:HOST:PORT`); throws with what is wrong. */
export function parseTransport(value: string): LmtpTarget {
  const v = value.trim();
  if (v === 'local') return { kind: 'local' };
  if (!v.startsWith('lmtp:')) throw new Error(`"${v}" is not local, lmtp:unix:PATH or lmtp:inet:HOST:PORT`);
  return parseLmtpNexthop(v.slice('lmtp:'.length));
}

/** An lmtp next hop: `local`, `unix:PATH` (relative to queue_directory unless absolute) or `inet:HOST:PORT` (`[v6]:PORT`). */
export function parseLmtpNexthop(nexthop: string): LmtpTarget {
  if (nexthop === 'local') return { kind: 'local' };
  let m = /^unix:(.+)$/.exec(nexthop);
  if (m) {
    if (/[\0\r\n]/.test(m[1])) throw new Error(`lmtp:${nexthop}: the socket path holds a control character`);
    return { kind: 'unix', path: m[1] };
  }
  m = /^inet:(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(nexthop);
  if (m) {
    const port = parseInt(m[3], 10);
    if (port < 1 || port > 65535) throw new Error(`lmtp:${nexthop}: ${port} is not a port number`);
    return { kind: 'inet', host: m[1] ?? m[2], port };
  }
  throw new Error(`"lmtp:${nexthop}" is not lmtp:unix:PATH or lmtp:inet:HOST:PORT`);
}

/** For the config parser: null when the value is a valid transport. */
export function checkTransport(value: string): string | null {
  try { parseTransport(value); return null; } catch (e) { return (e as Error).message; }
}

/** For the config parser: smtpd_sasl_path is a socket path, or inet:HOST:PORT when it starts with inet:. */
export function checkSaslPath(value: string): string | null {
  if (!value.startsWith('inet:')) return /[\0\r\n]/.test(value) ? 'the socket path holds a control character' : null;
  const m = /^inet:(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(value);
  return m && +m[1] >= 1 && +m[1] <= 65535 ? null : `"${value}" is not inet:HOST:PORT`;
}
