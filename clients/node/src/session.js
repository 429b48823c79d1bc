// A UDP session over node:dgram driven by the Core: the core decides (token, resume rule,
// challenge responses, pings, nearest director, failover), this shell only moves datagrams
// and arms one timer.
import dgram from "node:dgram";
import { EventEmitter } from "node:events";
import { performance } from "node:perf_hooks";
import { Core, addrKey, parseAddr } from "./core.js";
import { reopenMs } from "./query.js";

/**
 * Events: "message" (Buffer: game data), "pong" ({from, rttMs}), "resume" (the rule sent
 * [magic][token]), "failover" (new remote "ip:port"), "error" (socket errors).
 */
export class Session extends EventEmitter {
  /**
   * Opens a session with `grant` through the nearest of `directors` ("ip:port" data
   * addresses). Resolves once the token is sent (after the PONGs, or `probeForMs`, with
   * several addresses).
   */
  static open(directors, grant, options = {}) {
    const list = Array.isArray(directors) ? directors : [directors];
    return new Promise((resolve, reject) => {
      let s;
      try {
        s = new Session(list, grant, options);
      } catch (e) {
        reject(e);
        return;
      }
      s.socket.once("error", reject);
      s.socket.bind(0, () => {
        s.socket.off("error", reject);
        s.socket.on("error", (e) => s.emit("error", e));
        s.#flush();
        s.#arm();
        if (!s.core.isProbing) resolve(s);
        else s.once("chosen", () => resolve(s));
      });
    });
  }

  constructor(directors, grant, options) {
    super();
    this.clock = options.clock ?? (() => performance.now());
    this.core = new Core(directors, grant.token, reopenMs(grant), options, this.clock());
    const v6 = parseAddr(directors[0]).address.includes(":");
    this.socket = dgram.createSocket(v6 ? "udp6" : "udp4");
    this.timer = null;
    this.closed = false;
    this.socket.on("message", (msg, rinfo) => this.#onMessage(msg, rinfo));
  }

  /** Sends one game datagram to the director in use. */
  send(data) {
    const r = this.core.remote;
    this.socket.send(data, r.port, r.address);
  }

  /** Moves the session to a new grant's server (same socket). */
  switch(grant) {
    this.core.switch(this.clock(), grant.token, reopenMs(grant));
    this.#flush();
    this.#arm();
  }

  /** PINGs every director address again ("pong" events carry the RTTs). */
  ping() {
    this.core.ping(this.clock());
    this.#flush();
  }

  get remote() {
    return this.core.remote.key;
  }

  get stats() {
    return { ...this.core.stats };
  }

  get needsQuery() {
    return this.core.needsQuery(this.clock());
  }

  get localPort() {
    return this.socket.address().port;
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    this.socket.close();
  }

  #onMessage(msg, rinfo) {
    const wasProbing = this.core.isProbing;
    const r = this.core.handleDatagram(this.clock(), addrKey(rinfo.address, rinfo.port), msg);
    if (r.kind === "data") this.emit("message", msg);
    else if (r.kind === "pong") this.emit("pong", { from: r.from, rttMs: r.rttMs });
    this.#flush();
    if (wasProbing && !this.core.isProbing) this.emit("chosen", this.remote);
    this.#arm();
  }

  #onTimer() {
    if (this.closed) return;
    const before = this.core.stats;
    const resumes = before.resumes;
    const failovers = before.failovers;
    const wasProbing = this.core.isProbing;
    this.core.handleTimeout(this.clock());
    this.#flush();
    if (wasProbing && !this.core.isProbing) this.emit("chosen", this.remote);
    if (this.core.stats.failovers > failovers) this.emit("failover", this.remote);
    if (this.core.stats.resumes > resumes) this.emit("resume");
    this.#arm();
  }

  #flush() {
    if (this.closed) return;
    const now = this.clock();
    for (let t = this.core.pollTransmit(now); t; t = this.core.pollTransmit(now)) {
      this.socket.send(t.bytes, t.to.port, t.to.address);
    }
  }

  #arm() {
    if (this.closed) return;
    clearTimeout(this.timer);
    const wait = Math.max(0, this.core.pollTimeout() - this.clock());
    this.timer = setTimeout(() => this.#onTimer(), Math.ceil(wait));
  }
}
