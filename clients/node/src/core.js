// The client's data-port decisions without sockets or clocks (a port of the Rust
// `udp_director_client::core`; the table of decisions is in Docs/Clients.md §3). Times are
// milliseconds on any monotonic clock (performance.now() in the Session shell).
import { randomBytes } from "node:crypto";
import * as frames from "./frames.js";

const MAX_PENDING_RESPONSES = 4;

export const DEFAULTS = Object.freeze({
  silenceMs: 500,
  keepaliveMs: 5000,
  failoverAfterMs: 3000,
  probeForMs: 500,
});

/** "ip:port" or "[ip6]:port" -> { address, port, key }. */
export function parseAddr(text) {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(text) ?? /^([^:]+):(\d+)$/.exec(text);
  if (!m) throw new TypeError(`expected IP:PORT, got ${JSON.stringify(text)}`);
  const port = Number(m[2]);
  if (port < 1 || port > 65535) throw new TypeError(`port out of range in ${text}`);
  return { address: m[1], port, key: addrKey(m[1], port) };
}

export function addrKey(address, port) {
  return address.includes(":") ? `[${address}]:${port}` : `${address}:${port}`;
}

export class Core {
  /**
   * @param {string[]} directors data-port addresses ("ip:port"), in order of preference
   * @param {string} token
   * @param {number} reopenMs how long the token re-opens a session
   * @param {object} [options] magic (Buffer), silenceMs, keepaliveMs, failoverAfterMs, probeForMs, randomBytes
   * @param {number} now
   */
  constructor(directors, token, reopenMs, options = {}, now = 0) {
    if (!directors || directors.length === 0) throw new TypeError("expected at least one director address");
    this.magic = Buffer.from(options.magic ?? frames.DEFAULT_MAGIC);
    if (this.magic.length < 1 || this.magic.length > frames.MAX_MAGIC_LEN) throw new TypeError("expected a magic of 1..=32 bytes");
    this.#setToken(token);
    this.opts = { ...DEFAULTS, ...options };
    this.random = options.randomBytes ?? randomBytes;
    const seen = new Set();
    /** @type {{addr: {address: string, port: number, key: string}, rttMs: number|null, ping: {id: Buffer, sentAt: number|null}|null}[]} */
    this.dirs = [];
    for (const d of directors) {
      const addr = parseAddr(d);
      if (!seen.has(addr.key)) {
        seen.add(addr.key);
        this.dirs.push({ addr, rttMs: null, ping: null });
      }
    }
    this.granted = now;
    this.reopenMs = reopenMs;
    this.current = 0;
    this.probeUntil = null;
    this.lastHeard = this.lastAlive = this.lastResume = this.lastMove = now;
    /** @type {{kind: string, to: string, nonce?: Buffer}[]} */
    this.queue = [];
    this.stats = { resumes: 0, failovers: 0, challengesAnswered: 0, pongs: 0, dropped: 0 };
    if (this.dirs.length === 1) {
      this.queue.push({ kind: "token", to: this.dirs[0].addr.key });
    } else {
      this.probeUntil = now + this.opts.probeForMs;
      this.ping(now);
    }
  }

  #setToken(token) {
    const bytes = Buffer.from(String(token));
    if (!frames.isToken(bytes)) throw new TypeError("expected a token of 1..=128 printable ASCII bytes");
    this.token = String(token);
  }

  get isProbing() {
    return this.probeUntil !== null;
  }

  /** Where game datagrams go now: { address, port, key }. */
  get remote() {
    return this.dirs[this.current].addr;
  }

  /** Director addresses in order of preference with their smoothed RTTs (ms, or null). */
  directors() {
    return this.dirs.map((d) => ({ addr: d.addr.key, rttMs: d.rttMs }));
  }

  silentFor(now) {
    return Math.max(0, now - this.lastHeard);
  }

  needsQuery(now) {
    return now - this.granted >= this.reopenMs;
  }

  /** Moves the session to a new token's target: RESUME with it waits to be sent. */
  switch(now, token, reopenMs) {
    this.#setToken(token);
    this.granted = now;
    this.reopenMs = reopenMs;
    if (this.probeUntil === null) {
      this.#queueOnce({ kind: "resume", to: this.remote.key });
      this.lastResume = now;
    }
  }

  /** Queues a PING to every director (a new one replaces one in flight). */
  ping(_now) {
    for (let i = 0; i < this.dirs.length; i++) this.#queuePing(i);
  }

  /**
   * Reads a datagram from `from` ("ip:port" key). Returns { kind: "data" } (hand it to the
   * game), { kind: "challenge" }, { kind: "pong", from, rttMs }, or { kind: "dropped", reason }.
   */
  handleDatagram(now, from, datagram) {
    const r = this.#classify(now, from, datagram);
    if (r.kind === "dropped") this.stats.dropped++;
    return r;
  }

  #classify(now, from, datagram) {
    const i = this.dirs.findIndex((d) => d.addr.key === from);
    if (i < 0) return { kind: "dropped", reason: "stranger" };
    const f = frames.parse(datagram, this.magic);
    if (f && f.kind === "challenge") {
      // No token has left while probing: nobody can have a reason to ask for proof of it.
      if (this.probeUntil !== null) return { kind: "dropped", reason: "not_current" };
      if (this.queue.filter((p) => p.kind === "response").length >= MAX_PENDING_RESPONSES) {
        return { kind: "dropped", reason: "challenge_flood" };
      }
      this.queue.push({ kind: "response", to: from, nonce: f.nonce });
      return { kind: "challenge" };
    }
    if (f && f.kind === "pong") return this.#pong(now, i, f);
    // Anything else from the director is the game server's (forwarded verbatim).
    if (this.probeUntil !== null || i !== this.current) return { kind: "dropped", reason: "not_current" };
    this.lastHeard = now;
    return { kind: "data" };
  }

  #pong(now, i, f) {
    const d = this.dirs[i];
    if (!d.ping || d.ping.sentAt === null || !d.ping.id.equals(f.id)) return { kind: "dropped", reason: "unknown_pong" };
    const sentAt = d.ping.sentAt;
    d.ping = null;
    const heldMs = f.sendNs > f.receiveNs ? Number(f.sendNs - f.receiveNs) / 1e6 : 0;
    const sample = Math.max(0, now - sentAt - heldMs);
    d.rttMs = d.rttMs === null ? sample : (d.rttMs * 7 + sample) / 8;
    this.stats.pongs++;
    if (this.probeUntil !== null) {
      if (this.dirs.every((x) => x.rttMs !== null)) this.#choose(now);
    } else if (i === this.current) {
      this.lastAlive = now;
    }
    return { kind: "pong", from: d.addr.key, rttMs: sample };
  }

  /** When handleTimeout has something to do next (ms). */
  pollTimeout() {
    if (this.probeUntil !== null) return this.probeUntil;
    const { silenceMs, keepaliveMs } = this.opts;
    let at = Math.min(Math.max(this.lastHeard, this.lastResume) + silenceMs, this.lastResume + keepaliveMs);
    const fo = this.#failoverAt();
    if (fo !== null) at = Math.min(at, fo);
    return at;
  }

  #failoverAt() {
    if (this.dirs.length < 2) return null;
    return Math.max(this.lastHeard, this.lastAlive, this.lastMove) + this.opts.failoverAfterMs;
  }

  handleTimeout(now) {
    if (this.probeUntil !== null) {
      if (now >= this.probeUntil) this.#choose(now);
      return;
    }
    const fo = this.#failoverAt();
    if (fo !== null && now >= fo) {
      this.current = (this.current + 1) % this.dirs.length;
      this.lastMove = this.lastResume = now;
      this.stats.failovers++;
      this.stats.resumes++;
      this.#queueOnce({ kind: "resume", to: this.remote.key });
      return;
    }
    const sinceHeard = now - this.lastHeard;
    const sinceSent = now - this.lastResume;
    const { silenceMs, keepaliveMs } = this.opts;
    if ((sinceHeard >= silenceMs && sinceSent >= silenceMs) || sinceSent >= keepaliveMs) {
      this.lastResume = now;
      this.stats.resumes++;
      this.#queueOnce({ kind: "resume", to: this.remote.key });
      if (this.dirs.length > 1 && sinceHeard >= silenceMs) this.#queuePing(this.current);
    }
  }

  /** The next datagram to send: { to: {address, port, key}, bytes: Buffer, kind } or null. */
  pollTransmit(now) {
    const p = this.queue.shift();
    if (!p) return null;
    const d = this.dirs.find((x) => x.addr.key === p.to);
    let bytes;
    switch (p.kind) {
      case "token":
        bytes = frames.token(this.token);
        break;
      case "resume":
        bytes = frames.resume(this.magic, this.token);
        break;
      case "response":
        this.stats.challengesAnswered++;
        bytes = frames.response(this.magic, p.nonce, this.token);
        break;
      case "ping":
        d.ping.sentAt = now;
        bytes = frames.ping(this.magic, d.ping.id);
        break;
    }
    return { to: d.addr, bytes, kind: p.kind };
  }

  #choose(now) {
    this.probeUntil = null;
    const order = this.dirs.map((d, i) => [d, i]);
    order.sort(([a, i], [b, j]) => (a.rttMs === null) - (b.rttMs === null) || (a.rttMs ?? 0) - (b.rttMs ?? 0) || i - j);
    this.dirs = order.map(([d]) => d);
    this.queue = this.queue.filter((p) => p.kind !== "ping");
    for (const d of this.dirs) d.ping = null;
    this.current = 0;
    this.lastHeard = this.lastAlive = this.lastResume = this.lastMove = now;
    this.queue.push({ kind: "token", to: this.dirs[0].addr.key });
  }

  #queuePing(i) {
    this.dirs[i].ping = { id: Buffer.from(this.random(frames.PING_ID_LEN)), sentAt: null };
    this.#queueOnce({ kind: "ping", to: this.dirs[i].addr.key });
  }

  #queueOnce(p) {
    if (!this.queue.some((q) => q.kind === p.kind && q.to === p.to)) this.queue.push(p);
  }
}
