/**
 * Schemas for the JSON frames services send each other, and one small
 * validator for them. A server checks every request against the schema of
 * the socket it arrived on: only the fields that client may set, each of its
 * type and within its length, strings that are safe to put in a header. What
 * the validator returns is a fresh object holding only those fields, so
 * nothing else in a frame (`__proto__`, `origin`, `uid`, ...) can reach the
 * code that uses it.
 *
 * Each schema is declared `as const`, and its TypeScript type is derived from
 * it (`Infer<typeof schema>`): what the validator lets through and what the
 * code receiving it believes it has are one declaration, and cannot drift.
 */
import { QUEUES } from '../queue/spool.js';
import type { QueueOp } from '../queue/queue-ops.js';

export type Schema =
  | { readonly type: 'string'; readonly max: number; readonly min?: number; readonly pattern?: RegExp; readonly values?: readonly string[]; readonly multiline?: boolean }
  | { readonly type: 'integer'; readonly min: number; readonly max: number }
  | { readonly type: 'boolean' }
  | { readonly type: 'null' }
  | { readonly type: 'array'; readonly items: Schema; readonly max: number; readonly min?: number }
  | { readonly type: 'object'; readonly fields: { readonly [name: string]: Field } }
  | { readonly type: 'either'; readonly of: readonly Schema[] }
  /** One of several object schemas, chosen by the value of its `tag` field (a request's `type`). */
  | { readonly type: 'tagged'; readonly tag: string; readonly of: { readonly [value: string]: Schema } };

export type Field = Schema & { readonly optional?: boolean };

type OptionalKeys<F> = { [K in keyof F]: F[K] extends { optional: true } ? K : never }[keyof F];
type Flatten<T> = { [K in keyof T]: T[K] };

/** The TypeScript type of what `validate(schema, ...)` returns (`any` for a schema only known as Schema). */
export type Infer<S> =
  Schema extends S ? any
  : S extends { type: 'string'; values: readonly (infer V)[] } ? V
  : S extends { type: 'string' } ? string
  : S extends { type: 'integer' } ? number
  : S extends { type: 'boolean' } ? boolean
  : S extends { type: 'null' } ? null
  : S extends { type: 'array'; items: infer I } ? Infer<I>[]
  : S extends { type: 'object'; fields: infer F } ? Flatten<
    { -readonly [K in Exclude<keyof F, OptionalKeys<F>>]: Infer<F[K]> } & { -readonly [K in OptionalKeys<F>]?: Infer<F[K]> }>
  : S extends { type: 'either'; of: readonly (infer O)[] } ? Infer<O>
  : S extends { type: 'tagged'; of: infer O } ? { [K in keyof O]: Infer<O[K]> }[keyof O]
  : never;

export class SchemaError extends Error {
  constructor(readonly path: string, problem: string) {
    super(`${path}: ${problem}`);
    this.name = 'SchemaError';
  }
}

/** C0 controls and DEL: a CR or LF would start a new header line, a NUL ends C strings. */
const CONTROL = /[\x00-\x08\x0a-\x1f\x7f]/;

const describe = (v: unknown) => (v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v);

/** The value is of the JSON kind the schema describes (string, number, object...), whatever else is wrong with it. */
function ofKind(schema: Schema, value: unknown): boolean {
  switch (schema.type) {
    case 'string': return typeof value === 'string';
    case 'integer': return typeof value === 'number';
    case 'boolean': return typeof value === 'boolean';
    case 'null': return value === null;
    case 'array': return Array.isArray(value);
    case 'object': case 'tagged': return typeof value === 'object' && value !== null && !Array.isArray(value);
    case 'either': return schema.of.some((s) => ofKind(s, value));
  }
}

/** The value as the schema allows it, rebuilt from the fields it names; throws SchemaError naming the first problem. */
export function validate<S extends Schema, T = Infer<S>>(schema: S, value: unknown, path = 'request'): T {
  switch (schema.type) {
    case 'string': {
      if (typeof value !== 'string') throw new SchemaError(path, `expected a string, got ${describe(value)}`);
      if (value.length > schema.max) throw new SchemaError(path, `longer than ${schema.max} characters`);
      if (value.length < (schema.min ?? 0)) throw new SchemaError(path, `shorter than ${schema.min} characters`);
      // multi-line text (header fields) is checked by its own pattern
      if (!schema.multiline && CONTROL.test(value)) throw new SchemaError(path, 'contains a control character (CR, LF, NUL, ...)');
      if (schema.values && !schema.values.includes(value)) throw new SchemaError(path, `not one of ${schema.values.join(', ')}`);
      if (schema.pattern && !schema.pattern.test(value)) throw new SchemaError(path, 'not in the expected form');
      return value as T;
    }
    case 'integer':
      if (typeof value !== 'number' || !Number.isInteger(value)) throw new SchemaError(path, `expected an integer, got ${describe(value)}`);
      if (value < schema.min || value > schema.max) throw new SchemaError(path, `outside ${schema.min}..${schema.max}`);
      return value as T;
    case 'boolean':
      if (typeof value !== 'boolean') throw new SchemaError(path, `expected true or false, got ${describe(value)}`);
      return value as T;
    case 'null':
      if (value !== null) throw new SchemaError(path, `expected null, got ${describe(value)}`);
      return value as T;
    case 'array': {
      if (!Array.isArray(value)) throw new SchemaError(path, `expected an array, got ${describe(value)}`);
      if (value.length > schema.max) throw new SchemaError(path, `more than ${schema.max} entries`);
      if (value.length < (schema.min ?? 0)) throw new SchemaError(path, `fewer than ${schema.min} entries`);
      return value.map((v, i) => validate(schema.items, v, `${path}[${i}]`)) as T;
    }
    case 'object': {
      if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new SchemaError(path, `expected an object, got ${describe(value)}`);
      // own keys only: JSON.parse makes "__proto__" an ordinary own key, refused here like any unknown one
      for (const key of Object.keys(value)) {
        if (!Object.prototype.hasOwnProperty.call(schema.fields, key)) throw new SchemaError(`${path}.${key}`, 'field not allowed here');
      }
      const out: Record<string, unknown> = {};
      for (const [key, field] of Object.entries(schema.fields)) {
        const v = (value as Record<string, unknown>)[key];
        if (v === undefined) {
          if (!field.optional) throw new SchemaError(`${path}.${key}`, 'missing');
          continue;
        }
        out[key] = validate(field, v, `${path}.${key}`);
      }
      return out as T;
    }
    case 'either': {
      // Only the alternatives of the value's kind are tried: a mismatch found by throwing costs an
      // Error and its stack (`tls` is null or a string: one per message over TLS, bench/README.md).
      // None of its kind: all are tried, for the problem.
      const fitting = schema.of.filter((s) => ofKind(s, value));
      // the problem found deepest is the one of the alternative the client meant (an array of bad ids, not "not a string")
      let best: SchemaError | null = null;
      for (const s of fitting.length ? fitting : schema.of) {
        try { return validate(s, value, path); } catch (e) {
          if (!(e instanceof SchemaError)) throw e;
          if (!best || e.path.length > best.path.length) best = e;
        }
      }
      throw best ?? new SchemaError(path, 'no schema matches');
    }
    case 'tagged': {
      // the tag picks the schema, so a problem is reported against the one the client meant
      if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new SchemaError(path, `expected an object, got ${describe(value)}`);
      const tag = (value as Record<string, unknown>)[schema.tag];
      const names = Object.keys(schema.of);
      if (typeof tag !== 'string' || !Object.prototype.hasOwnProperty.call(schema.of, tag)) {
        throw new SchemaError(`${path}.${schema.tag}`, tag === undefined ? 'missing' : `not one of ${names.join(', ')}`);
      }
      return validate(schema.of[tag], value, path);
    }
  }
}

// ---------------------------------------------------------------- cleanup

const opt = <const S extends Schema>(s: S): S & { optional: true } => ({ ...s, optional: true });

/** A cleanup submission's first frame: `{type: "message", envelope}`, the envelope as the socket allows it. */
function messageRequest<
  const F extends { readonly [name: string]: Field },
  const X extends { readonly [name: string]: Field } = {},
>(envelope: F, extra?: X) {
  return {
    type: 'object', fields: {
      ...(extra ?? {} as X),
      type: { type: 'string', max: 16, values: ['message'] },
      envelope: { type: 'object', fields: envelope },
    },
  } as const satisfies Schema;
}

/** An envelope address (RFC 5321 4.5.3.1.3: a path is at most 256 octets; room for quoting). */
const address = { type: 'string', max: 512 } as const;
const recipientAddress = { ...address, min: 1 } as const;
/** What a client called itself (HELO) or its checked DNS name: one line, within a DNS name's length and some. */
const hostText = { type: 'string', max: 255 } as const;
/** DSN NOTIFY (RFC 3461). */
const notify = { type: 'array', max: 8, min: 1, items: { type: 'string', max: 7, values: ['NEVER', 'SUCCESS', 'FAILURE', 'DELAY'] } } as const;
/** DSN ORCPT (RFC 3461 4.2): addr-type;address, xtext decoded, at most 500 characters. */
const orcpt = { type: 'string', max: 500, pattern: /^[A-Za-z0-9-]+;.+$/ } as const;
const dsn = {
  type: 'object', fields: {
    ret: opt({ type: 'string', max: 4, values: ['FULL', 'HDRS'] }),
    // RFC 3461 4.4: ENVID is at most 100 characters; as sendmail takes it (maildrop.ts)
    envid: opt({ type: 'string', max: 100, pattern: /^[^\s\x00-\x1f\x7f]*$/ }),
  },
} as const;

/**
 * Requests on `private/cleanup`: smtpd's. origin is `smtpd` because of the
 * socket; a recipient is an address with the client's DSN NOTIFY and ORCPT;
 * the envelope may carry DSN RET/ENVID and REQUIRETLS; uid and user do not
 * exist for it.
 */
export function smtpdMessageRequest(recipientLimit: number): SmtpdMessageSchema {
  let schema = smtpdMessageSchemas.get(recipientLimit);
  if (!schema) smtpdMessageSchemas.set(recipientLimit, schema = buildSmtpdMessageRequest(recipientLimit));
  return schema;
}
// Built once per recipient limit, not per message (its object tree and regexes were ≈ 6 % of
// cleanup's time, bench/README.md); validate() only reads a schema, so one copy serves all.
const smtpdMessageSchemas = new Map<number, SmtpdMessageSchema>();
type SmtpdMessageSchema = ReturnType<typeof buildSmtpdMessageRequest>;

function buildSmtpdMessageRequest(recipientLimit: number) {
  return messageRequest({
    sender: address,
    recipients: {
      type: 'array', min: 1, max: recipientLimit, items: {
        type: 'object', fields: { address: recipientAddress, notify: opt(notify), orcpt: opt(orcpt) },
      },
    },
    client: {
      type: 'object', fields: {
        // the peer's IP address as the socket reported it
        address: { type: 'string', max: 45, pattern: /^[0-9A-Fa-f:.]+$/ },
        name: hostText,
        helo: hostText,
      },
    },
    protocol: { type: 'string', max: 16, pattern: /^[A-Z]+$/ },
    tls: { type: 'either', of: [{ type: 'null' }, { type: 'string', max: 200 }] },
    sasl: opt({ type: 'string', max: 320, min: 1 }),
    dsn: opt(dsn),
    // RFC 8689: only smtpd's socket may ask for it (the client said REQUIRETLS over TLS)
    requireTls: opt({ type: 'boolean' }),
  } as const, {
    // smtpd with milters: reply with the queue id at once (the milters' `i` macro)
    want_id: opt({ type: 'boolean' }),
  } as const);
}

/**
 * sendmail's limits, not smtpd's: maildrop takes addresses of up to 1000
 * characters (pickup adds @$myorigin) and any number of recipients within its
 * 4 MiB header line; what pickup sends must never be refused for less.
 */
const localAddress = { type: 'string', max: 1000 + 256 } as const;
const LOCAL_RECIPIENT_LIMIT = 1_000_000;

/**
 * Requests on `private/cleanup.local`, whose only clients are the queue owner
 * (pickup, qmgr's notifications) and root: they say which of the two they are,
 * and pickup passes on the maildrop file owner's uid and login, the identity it
 * alone can see.
 */
export function localMessageRequest(): LocalMessageSchema {
  return localMessageSchema ??= buildLocalMessageRequest();
}
let localMessageSchema: LocalMessageSchema | undefined; // built once, as smtpd's above
type LocalMessageSchema = ReturnType<typeof buildLocalMessageRequest>;

function buildLocalMessageRequest() {
  return messageRequest({
    sender: localAddress,
    recipients: {
      type: 'array', min: 1, max: LOCAL_RECIPIENT_LIMIT, items: {
        type: 'object', fields: { address: { ...localAddress, min: 1 }, notify: opt(notify) },
      },
    },
    origin: { type: 'string', max: 16, values: ['pickup', 'bounce'] },
    protocol: opt({ type: 'string', max: 16, pattern: /^[A-Z]+$/ }),
    uid: opt({ type: 'integer', min: 0, max: 0xffffffff }),
    user: opt({ type: 'string', max: 256, min: 1 }),
    dsn: opt(dsn),
  } as const);
}

/**
 * Header fields smtpd may put in front of a message: its own verdicts
 * (Authentication-Results:, spamd's X-Spam-*, X-Postern-Quarantine:), each
 * line CRLF-terminated, continuation lines folded, no empty line.
 */
const AFTER_BODY_HEADERS = /^(?:(?:Authentication-Results|X-Spam-[A-Za-z0-9-]+|X-Postern-Quarantine):[^\r\n\x00]*\r\n(?:[ \t][^\r\n\x00]*\r\n)*)*$/i;

export const afterBodyRequest = {
  type: 'object', fields: {
    type: { type: 'string', max: 16, values: ['after-body'] },
    headers: opt({ type: 'string', max: 64 * 1024, multiline: true, pattern: AFTER_BODY_HEADERS }),
    notes: opt({
      type: 'object', fields: {
        auth: opt({
          type: 'object', fields: {
            spf: opt({ type: 'string', max: 16, pattern: /^[a-z]+$/ }),
            dkimAligned: opt({ type: 'boolean' }),
            dmarc: opt({ type: 'string', max: 16, pattern: /^[a-z]+$/ }),
          },
        }),
      },
    }),
  },
} as const satisfies Schema;

// ---------------------------------------------------------------- qmgr (private/qmgr): cleanup's trigger, the administrator's requests

const queueId = { type: 'string', max: 20, pattern: /^[0-9A-F]{20}$/ } as const;
const typeIs = <const T extends string>(name: T) => ({ type: 'string', max: 16, values: [name] } as const);

/**
 * `postern queue` may name any number of messages (postsuper -d - reads them
 * from standard input); the CLI checked each id already, qmgr checks again.
 */
const MAX_ADMIN_IDS = 1_000_000;
const queueOp = (name: QueueOp) => ({
  type: 'object', fields: {
    type: typeIs(name),
    ids: { type: 'either', of: [{ type: 'string', max: 3, values: ['ALL'] }, { type: 'array', max: MAX_ADMIN_IDS, items: queueId }] },
    queues: opt({ type: 'array', max: QUEUES.length, items: { type: 'string', max: 16, values: QUEUES } }),
  },
} as const);

export const qmgrRequest = {
  type: 'tagged', tag: 'type', of: {
    trigger: { type: 'object', fields: { type: typeIs('trigger'), queue_id: opt(queueId) } },
    // site: a domain or [address]; admin.ts checks its form and answers "bad site"
    flush: { type: 'object', fields: { type: typeIs('flush'), site: opt({ type: 'either', of: [{ type: 'string', max: 255 }, { type: 'null' }] }) } },
    hold: queueOp('hold'), release: queueOp('release'), delete: queueOp('delete'),
    expire: queueOp('expire'), requeue: queueOp('requeue'), deliver: queueOp('deliver'),
  },
} as const satisfies Schema;

// ---------------------------------------------------------------- pickup (private/pickup), showq (public/showq)

export const pickupTrigger = { type: 'object', fields: { type: typeIs('trigger') } } as const satisfies Schema;
export const showqRequest = { type: 'object', fields: { type: typeIs('list') } } as const satisfies Schema;

// ---------------------------------------------------------------- anvil (private/anvil)

/** A service name and a client address, as smtpd's anvil client builds the key. */
const anvilName = { type: 'string', min: 1, max: 200 } as const;
const anvilEvent = <const T extends string>(name: T) =>
  ({ type: 'object', fields: { type: typeIs(name), service: anvilName, client: anvilName } } as const);

export const anvilRequest = {
  type: 'tagged', tag: 'type', of: {
    connect: anvilEvent('connect'), disconnect: anvilEvent('disconnect'), message: anvilEvent('message'),
    recipient: anvilEvent('recipient'), lookup: anvilEvent('lookup'),
    // peek: count the attempt without adding one (smtpd asks before AUTH, adds after a failure)
    auth: { type: 'object', fields: { type: typeIs('auth'), service: anvilName, client: anvilName, peek: opt({ type: 'boolean' }) } },
  },
} as const satisfies Schema;

// ---------------------------------------------------------------- delivery (qmgr -> private/smtp, private/lmtp, ...)

/** Addresses after alias expansion: sendmail's limit and room for a rewritten domain. */
const deliveryAddress = { type: 'string', min: 1, max: 2048 } as const;
/** Hosts in qmgr's dead-destination table, "address:port" (qmgr keeps at most 300 characters each). */
const deadHost = { type: 'string', min: 1, max: 300 } as const;

export const deliveryRequest = {
  type: 'object', fields: {
    type: typeIs('deliver'),
    queue_id: queueId,
    // the queue file in active/; the agent checks that it holds queue_id
    file: { type: 'string', min: 1, max: 4096 },
    // a domain, [address]:port, local, unix:PATH or inet:HOST:PORT (lmtp)
    nexthop: { type: 'string', min: 1, max: 4096 },
    recipients: {
      type: 'array', min: 1, max: 1_000_000, items: {
        type: 'object', fields: { index: { type: 'integer', min: 0, max: 0x7fffffff }, address: deliveryAddress },
      },
    },
    skip: opt({ type: 'array', max: 100_000, items: deadHost }),
  },
} as const satisfies Schema;

/**
 * qmgr -> local (private/local.qmgr): a recipient group for local's mailboxes.
 * local cannot read the queue, so the J frame carries the envelope it needs
 * and D frames after it the message itself (as LMTP's DATA did), then E.
 */
export const localDeliveryRequest = {
  type: 'object', fields: {
    type: typeIs('deliver'),
    queue_id: queueId,
    sender: localAddress,
    // the message's arrival (ms since the epoch): the delay= of local's log line
    arrival: { type: 'integer', min: 0, max: Number.MAX_SAFE_INTEGER },
    recipients: {
      type: 'array', min: 1, max: 1_000_000, items: {
        type: 'object', fields: { index: { type: 'integer', min: 0, max: 0x7fffffff }, address: deliveryAddress },
      },
    },
  },
} as const satisfies Schema;

// ---------------------------------------------------------------- proxymap (private/proxymap)

export const proxymapRequest = {
  type: 'object', fields: {
    op: { type: 'string', max: 16, values: ['lookup', 'exists', 'credentials', 'userInfo'] },
    // a table as main.cf names it; proxymap serves only those (proxy_read_maps)
    spec: { type: 'string', min: 1, max: 4096 },
    // an address, a domain, a client address or name: one line
    key: { type: 'string', max: 4096 },
  },
} as const satisfies Schema;

/** A header field name (RFC 5322 ftext) and a value: one line or folded (CRLF then a space or tab), no NUL. */
const headerName = { type: 'string', max: 255, min: 1, pattern: /^[!-9;-~]+$/ } as const;
const headerValue = { type: 'string', max: 64 * 1024, multiline: true, pattern: /^(?:[^\r\n\x00]|\r\n[ \t])*$/ } as const;

/**
 * smtpd -> cleanup after the body: what its milters changed (docs/milter.md,
 * "How Postern applies milter actions"). Recipients are deleted by the address
 * the client gave; header edits are applied in order to the client's header
 * section; hold puts the queue file in hold/ with that reason.
 */
export function milterEditsRequest(recipientLimit: number): MilterEditsSchema {
  let schema = milterEditsSchemas.get(recipientLimit);
  if (!schema) milterEditsSchemas.set(recipientLimit, schema = buildMilterEditsRequest(recipientLimit));
  return schema;
}
const milterEditsSchemas = new Map<number, MilterEditsSchema>(); // once per recipient limit, as smtpd's request
type MilterEditsSchema = ReturnType<typeof buildMilterEditsRequest>;

function buildMilterEditsRequest(recipientLimit: number) {
  return {
    type: 'object', fields: {
      type: { type: 'string', max: 16, values: ['milter'] },
      sender: opt(address),
      add_recipients: opt({ type: 'array', max: recipientLimit, items: recipientAddress }),
      delete_recipients: opt({ type: 'array', max: recipientLimit, items: recipientAddress }),
      headers: opt({
        type: 'array', max: 1000, items: {
          type: 'object', fields: {
            op: { type: 'string', max: 8, values: ['add', 'insert', 'change'] },
            index: opt({ type: 'integer', min: 0, max: 1_000_000 }),
            name: headerName,
            value: headerValue,
          },
        },
      }),
      hold: opt({ type: 'string', max: 255 }),
    },
  } as const satisfies Schema;
}
export type MilterEditsRequest = Infer<ReturnType<typeof milterEditsRequest>>;

export type SmtpdMessageRequest = Infer<ReturnType<typeof smtpdMessageRequest>>;
export type LocalMessageRequest = Infer<ReturnType<typeof localMessageRequest>>;
export type AfterBodyRequest = Infer<typeof afterBodyRequest>;
export type QmgrRequest = Infer<typeof qmgrRequest>;
export type PickupTrigger = Infer<typeof pickupTrigger>;
export type ShowqRequest = Infer<typeof showqRequest>;
export type AnvilRequest = Infer<typeof anvilRequest>;
export type DeliveryRequest = Infer<typeof deliveryRequest>;
export type LocalDeliveryRequest = Infer<typeof localDeliveryRequest>;
export type ProxymapRequest = Infer<typeof proxymapRequest>;
