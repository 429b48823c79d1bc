// The Node client against conformance/vectors.json (the file every client is held to).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { Core, QueryError, buildQuery, frames, parseAnswer, reopenMs } from "../src/index.js";

const v = JSON.parse(readFileSync(new URL("../../../conformance/vectors.json", import.meta.url), "utf8"));
const hex = (s) => Buffer.from(s, "hex");

test("query lines", () => {
  for (const c of v.queries) {
    const b = c.builder;
    const q = buildQuery({ ...b, labels: b.labels, annotations: b.annotations, status: b.status });
    assert.deepEqual(q, c.request, c.name);
    if (c.line) assert.equal(JSON.stringify(q), c.line, c.name);
  }
});

test("answers and error answers", () => {
  const codes = new Set();
  for (const c of v.answers) {
    if (c.grant) {
      const g = parseAnswer(c.line);
      assert.deepEqual(g, c.grant, c.name);
      assert.equal(reopenMs(g), c.reopenSeconds * 1000, c.name);
    } else if (c.error) {
      assert.throws(() => parseAnswer(c.line), (e) => e instanceof QueryError && e.code === c.error.code && e.detail === c.error.message, c.name);
      codes.add(c.error.code);
    } else {
      assert.throws(() => parseAnswer(c.line), (e) => e.code === "garbled", c.name);
    }
  }
  for (const code of ["bad_request", "too_large", "unknown_resource_type", "forbidden_namespace", "no_match", "unavailable", "rate_limited", "unauthorized", "internal"]) {
    assert.ok(codes.has(code), code);
  }
});

test("every datagram byte for byte", () => {
  for (const c of v.datagrams) {
    const magic = c.magic ? hex(c.magic) : Buffer.alloc(0);
    const made = {
      token: () => frames.token(c.token),
      resume: () => frames.resume(magic, c.token),
      challenge: () => frames.challenge(magic, hex(c.nonce)),
      response: () => frames.response(magic, hex(c.nonce), c.token),
      ping: () => frames.ping(magic, hex(c.id)),
      pong: () => frames.pong(magic, hex(c.id), BigInt(c.receiveNs), BigInt(c.sendNs)),
    }[c.kind]();
    assert.equal(made.toString("hex"), c.hex, c.name);
    const parsed = frames.parse(hex(c.hex), magic);
    if (c.kind === "token") assert.equal(parsed, null);
    else assert.equal(parsed.kind, c.kind, c.name);
    if (c.kind === "pong") assert.equal(parsed.sendNs, BigInt(c.sendNs));
  }
});

test("what arrives is classified as the vectors say", () => {
  const { magic, token, cases } = v.inbound;
  const director = "127.0.0.1:7777";
  for (const c of cases) {
    const core = new Core([director], token, 30_000, { magic: hex(magic) }, 0);
    assert.equal(core.pollTransmit(0).kind, "token");
    const r = core.handleDatagram(0, director, hex(c.hex));
    if (c.class === "data") assert.deepEqual(r, { kind: "data" }, c.name);
    if (c.class === "challenge") {
      assert.deepEqual(r, { kind: "challenge" }, c.name);
      assert.equal(core.pollTransmit(0).bytes.toString("hex"), c.reply, c.name);
    }
    if (c.class === "pong") {
      assert.equal(r.kind, "dropped", "no PING in flight");
      const f = frames.parse(hex(c.hex), hex(magic));
      assert.equal(f.receiveNs.toString(), c.receiveNs);
      assert.equal(f.id.toString("hex"), c.id);
    }
  }
});
