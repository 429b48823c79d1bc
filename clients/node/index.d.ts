// Types for udp-director-client (hand-written; the sources are plain ES modules).
/// <reference types="node" />
import { EventEmitter } from "node:events";

/** The SPEC §2 request object. */
export interface QueryRequest {
  resourceType: string;
  namespace?: string;
  labelSelector?: Record<string, string>;
  annotationSelector?: Record<string, string>;
  statusQuery?: { jsonPath: string; expectedValues?: string[]; expectedValue?: string };
  playerId?: string;
  /** A JWT from the studio's backend, passed through unread. */
  ticket?: string;
}

export interface QueryOptions {
  resourceType: string;
  namespace?: string;
  labels?: Record<string, string> | [string, string][];
  annotations?: Record<string, string> | [string, string][];
  status?: { jsonPath: string; expectedValues: string[] };
  playerId?: string;
  ticket?: string;
}

export interface Grant {
  token: string;
  ttlSeconds: number;
  /** Sealed tokens: how long [magic][token] re-opens the session on any replica. */
  resumeSeconds: number | null;
  target: { namespace: string; name: string; address: string | null; port: number | null };
}

export class QueryError extends Error {
  /** The director's error code (no_match, unauthorized, ...), "garbled", "timeout" or a socket error code. */
  code: string;
  detail: string;
}

export function buildQuery(options: QueryOptions): QueryRequest;
export function parseAnswer(line: string): Grant;
/** max(resumeSeconds, ttlSeconds) in milliseconds. */
export function reopenMs(grant: Grant): number;
export function query(queryAddr: string, request: QueryRequest, options?: { timeoutMs?: number }): Promise<Grant>;

export interface CoreOptions {
  /** controlPacketMagicBytes, 1..=32 bytes (default FF FF FF FF "RESET"). */
  magic?: Uint8Array;
  silenceMs?: number;
  keepaliveMs?: number;
  failoverAfterMs?: number;
  probeForMs?: number;
  randomBytes?: (n: number) => Uint8Array;
}

export const DEFAULTS: Readonly<{ silenceMs: number; keepaliveMs: number; failoverAfterMs: number; probeForMs: number }>;

export interface Addr { address: string; port: number; key: string }
export function parseAddr(text: string): Addr;
export function addrKey(address: string, port: number): string;

export type Incoming =
  | { kind: "data" }
  | { kind: "challenge" }
  | { kind: "pong"; from: string; rttMs: number }
  | { kind: "dropped"; reason: "stranger" | "not_current" | "unknown_pong" | "challenge_flood" };

export interface Transmit { to: Addr; bytes: Buffer; kind: "token" | "resume" | "response" | "ping" }

export interface Stats { resumes: number; failovers: number; challengesAnswered: number; pongs: number; dropped: number }

/** The sans-IO core: times in milliseconds on any monotonic clock. */
export class Core {
  constructor(directors: string[], token: string, reopenMs: number, options?: CoreOptions, now?: number);
  readonly isProbing: boolean;
  readonly remote: Addr;
  readonly stats: Stats;
  directors(): { addr: string; rttMs: number | null }[];
  silentFor(now: number): number;
  needsQuery(now: number): boolean;
  switch(now: number, token: string, reopenMs: number): void;
  ping(now: number): void;
  handleDatagram(now: number, from: string, datagram: Buffer): Incoming;
  handleTimeout(now: number): void;
  pollTimeout(): number;
  pollTransmit(now: number): Transmit | null;
}

export interface SessionOptions extends CoreOptions {
  clock?: () => number;
}

export class Session extends EventEmitter {
  static open(directors: string | string[], grant: Grant, options?: SessionOptions): Promise<Session>;
  send(data: Uint8Array): void;
  switch(grant: Grant): void;
  ping(): void;
  close(): void;
  readonly remote: string;
  readonly stats: Stats;
  readonly needsQuery: boolean;
  readonly localPort: number;
  on(event: "message", listener: (data: Buffer) => void): this;
  on(event: "pong", listener: (p: { from: string; rttMs: number }) => void): this;
  on(event: "resume", listener: () => void): this;
  on(event: "failover", listener: (remote: string) => void): this;
  on(event: "chosen", listener: (remote: string) => void): this;
  on(event: "error", listener: (e: Error) => void): this;
}

export namespace frames {
  const DEFAULT_MAGIC: Buffer;
  const MAX_MAGIC_LEN: number;
  const MAX_TOKEN_LEN: number;
  const NONCE_LEN: number;
  const PING_ID_LEN: number;
  const TAG: Readonly<{ CHALLENGE: 1; RESPONSE: 2; PING: 3; PONG: 4 }>;
  function isToken(token: Uint8Array): boolean;
  function token(token: string): Buffer;
  function resume(magic: Uint8Array, token: string): Buffer;
  function challenge(magic: Uint8Array, nonce: Uint8Array): Buffer;
  function response(magic: Uint8Array, nonce: Uint8Array, token: string): Buffer;
  function ping(magic: Uint8Array, id: Uint8Array): Buffer;
  function pong(magic: Uint8Array, id: Uint8Array, receiveNs: bigint, sendNs: bigint): Buffer;
  type Frame =
    | { kind: "challenge"; nonce: Buffer }
    | { kind: "response"; nonce: Buffer; token: string }
    | { kind: "ping"; id: Buffer }
    | { kind: "pong"; id: Buffer; receiveNs: bigint; sendNs: bigint }
    | { kind: "resume"; token: string }
    | { kind: "invalid"; reason: string };
  function parse(datagram: Buffer, magic: Buffer): Frame | null;
}
