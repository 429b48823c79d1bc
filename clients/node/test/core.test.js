// The core with injected time: no sockets, no sleeps.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Core, frames } from "../src/index.js";

const TOKEN = "550e8400-e29b-41d4-a716-446655440000";
const A = "127.0.0.1:1";
const B = "127.0.0.1:2";
let counter = 0;
const rnd = (n) => Buffer.alloc(n, ++counter);

function drain(c, now) {
  const out = [];
  for (let t = c.pollTransmit(now); t; t = c.pollTransmit(now)) out.push({ to: t.to.key, kind: t.kind, bytes: t.bytes });
  return out;
}

function pongFor(ping, heldNs = 0n) {
  const id = ping.subarray(10, 18);
  return frames.pong(frames.DEFAULT_MAGIC, id, 1000n, 1000n + heldNs);
}

test("one director: the token, then [magic][token] after 500 ms of silence and every 5 s", () => {
  const c = new Core([A], TOKEN, 30_000, { randomBytes: rnd }, 0);
  assert.deepEqual(drain(c, 0), [{ to: A, kind: "token", bytes: Buffer.from(TOKEN) }]);
  assert.equal(c.pollTimeout(), 500);
  c.handleTimeout(499);
  assert.deepEqual(drain(c, 499), []);
  c.handleTimeout(500);
  assert.deepEqual(drain(c, 500), [{ to: A, kind: "resume", bytes: frames.resume(frames.DEFAULT_MAGIC, TOKEN) }]);
  for (let t = 600; t < 5500; t += 100) {
    assert.deepEqual(c.handleDatagram(t, A, Buffer.from("state")), { kind: "data" });
    c.handleTimeout(t);
    assert.deepEqual(drain(c, t), [], `at ${t}`);
  }
  assert.equal(c.pollTimeout(), 5500, "keepalive");
  c.handleTimeout(5500);
  assert.equal(drain(c, 5500)[0].kind, "resume");
  assert.equal(c.stats.failovers, 0);
});

test("a challenge is answered with its nonce and the token, strangers are not", () => {
  const c = new Core([A], TOKEN, 30_000, {}, 0);
  drain(c, 0);
  const nonce = Buffer.from([...Array(16).keys()].map((i) => 0xa0 + i));
  const ch = frames.challenge(frames.DEFAULT_MAGIC, nonce);
  assert.deepEqual(c.handleDatagram(0, "127.0.0.1:9", ch), { kind: "dropped", reason: "stranger" });
  assert.deepEqual(c.handleDatagram(0, A, ch), { kind: "challenge" });
  const [r] = drain(c, 0);
  assert.equal(r.kind, "response");
  assert.deepEqual(r.bytes, Buffer.concat([frames.DEFAULT_MAGIC, Buffer.from([2]), nonce, Buffer.from(TOKEN)]));
  for (let i = 0; i < 4; i++) c.handleDatagram(0, A, ch);
  assert.deepEqual(c.handleDatagram(0, A, ch), { kind: "dropped", reason: "challenge_flood" });
});

test("the nearest director by RTT gets the token; silence fails over to the next", () => {
  const c = new Core([A, B], TOKEN, 30_000, { randomBytes: rnd }, 0);
  assert.ok(c.isProbing);
  const pings = drain(c, 0);
  assert.deepEqual(pings.map((p) => [p.to, p.kind, p.bytes.length]), [[A, "ping", 34], [B, "ping", 34]]);
  assert.deepEqual(c.handleDatagram(0, A, frames.challenge(frames.DEFAULT_MAGIC, Buffer.alloc(16))), { kind: "dropped", reason: "not_current" }, "no proof before the token left");
  // B answers in 20 ms; A in 40 ms having held it 30 ms (10 ms of network): A is nearer.
  assert.deepEqual(c.handleDatagram(20, B, pongFor(pings[1].bytes)), { kind: "pong", from: B, rttMs: 20 });
  const r = c.handleDatagram(40, A, pongFor(pings[0].bytes, 30_000_000n));
  assert.equal(r.kind, "pong");
  assert.equal(r.rttMs, 10);
  assert.ok(!c.isProbing, "both answered");
  assert.deepEqual(drain(c, 40), [{ to: A, kind: "token", bytes: Buffer.from(TOKEN) }]);
  assert.deepEqual(c.directors(), [{ addr: A, rttMs: 10 }, { addr: B, rttMs: 20 }]);
  // Silent: resumes with a PING to A, then at 3 s the failover to B.
  let at = c.pollTimeout();
  const sent = [];
  while (at <= 40 + 3000) {
    c.handleTimeout(at);
    sent.push(...drain(c, at));
    at = c.pollTimeout();
  }
  assert.equal(c.remote.key, B);
  assert.equal(c.stats.failovers, 1);
  assert.deepEqual(sent.at(-1), { to: B, kind: "resume", bytes: frames.resume(frames.DEFAULT_MAGIC, TOKEN) });
  assert.ok(sent.slice(0, -1).every((t) => t.to === A));
  assert.deepEqual(c.handleDatagram(at, A, Buffer.from("late")), { kind: "dropped", reason: "not_current" });
});

test("no PONG at all: the first address after probeForMs", () => {
  const c = new Core([A, B], TOKEN, 30_000, {}, 0);
  drain(c, 0);
  assert.equal(c.pollTimeout(), 500);
  c.handleTimeout(500);
  assert.deepEqual(drain(c, 500).map((t) => [t.to, t.kind]), [[A, "token"]]);
});

test("switch, bad tokens and magics", () => {
  const c = new Core([A], TOKEN, 30_000, {}, 0);
  drain(c, 0);
  c.switch(100, "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee", 600_000);
  assert.deepEqual(drain(c, 100)[0].bytes, frames.resume(frames.DEFAULT_MAGIC, "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"));
  assert.ok(!c.needsQuery(600_099));
  assert.ok(c.needsQuery(600_100));
  assert.throws(() => c.switch(0, "has space", 1), /printable ASCII/);
  assert.throws(() => new Core([], TOKEN, 1), /at least one/);
  assert.throws(() => new Core([A], TOKEN, 1, { magic: Buffer.alloc(33) }), /1..=32/);
  assert.throws(() => new Core(["localhost"], TOKEN, 1), /IP:PORT/);
});
