// DNS: the resolver (MX, A/AAAA, PTR, TXT, TLSA, DNSSEC AD bit) and the wire codec.
export * from './dns.js';
export * from './dns-wire.js';
