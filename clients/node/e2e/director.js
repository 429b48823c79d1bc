// Against a real director started by capi/tests/node.rs (UDP_DIRECTOR_QUERY and
// UDP_DIRECTOR_DATA; mapping `echo` with zone=z0 -> "a:" and zone=z1 -> "b:" echo servers):
// query -> token -> session -> reset -> resume, and an error answer.
import { test } from "node:test";
import assert from "node:assert/strict";
import { QueryError, Session, buildQuery, query } from "../src/index.js";

const QUERY = process.env.UDP_DIRECTOR_QUERY;
const DATA = process.env.UDP_DIRECTOR_DATA;

/** Sends `payload` until a reply starting with `prefix` arrives. */
function exchange(s, payload, prefix, within = 5000) {
  return new Promise((resolve, reject) => {
    const onMessage = (m) => {
      if (m.toString().startsWith(prefix)) {
        clearInterval(every);
        clearTimeout(deadline);
        s.off("message", onMessage);
        resolve(m.toString());
      }
    };
    s.on("message", onMessage);
    const every = setInterval(() => s.send(Buffer.from(payload)), 100);
    const deadline = setTimeout(() => {
      clearInterval(every);
      s.off("message", onMessage);
      reject(new Error(`no reply starting with ${prefix} to ${payload}`));
    }, within);
    s.send(Buffer.from(payload));
  });
}

test("query, token, session, reset and resume through the director", async () => {
  assert.ok(QUERY && DATA, "UDP_DIRECTOR_QUERY and UDP_DIRECTOR_DATA are set by capi/tests/node.rs");
  await assert.rejects(query(QUERY, buildQuery({ resourceType: "no-such-type" })), (e) => e instanceof QueryError && e.code === "unknown_resource_type");

  const first = await query(QUERY, buildQuery({ resourceType: "echo", labels: { zone: "z0" } }));
  const s = await Session.open([DATA], first);
  try {
    assert.equal(await exchange(s, "js:hello-a", "a:"), "a:js:hello-a");
    const second = await query(QUERY, buildQuery({ resourceType: "echo", labels: { zone: "z1" } }));
    s.switch(second);
    assert.equal(await exchange(s, "js:hello-b", "b:"), "b:js:hello-b");
    // Quiet: the resume rule sends [magic][token] within ~500 ms; play goes on.
    await new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error("no resume")), 3000);
      s.once("resume", () => {
        clearTimeout(t);
        resolve();
      });
    });
    assert.equal(await exchange(s, "js:after-resume", "b:"), "b:js:after-resume");
    assert.ok(s.stats.resumes >= 1);
    assert.equal(s.remote, DATA);
    console.log(`remote ${s.remote} resumes ${s.stats.resumes}`);
  } finally {
    s.close();
  }
});

test("a silent first address is left for the next one, which resumes the session", async () => {
  const SILENT = process.env.UDP_DIRECTOR_SILENT;
  assert.ok(SILENT, "UDP_DIRECTOR_SILENT is set by capi/tests/node.rs");
  const grant = await query(QUERY, buildQuery({ resourceType: "echo", labels: { zone: "z1" } }));
  // Neither answers PINGs today: the first address gets the token, then silence moves on.
  const s = await Session.open([SILENT, DATA], grant, { failoverAfterMs: 1000 });
  try {
    assert.equal(s.remote, SILENT);
    const failedOver = new Promise((resolve) => s.once("failover", resolve));
    assert.equal(await exchange(s, "js:failover", "b:", 8000), "b:js:failover");
    assert.equal(await failedOver, DATA);
    assert.equal(s.remote, DATA);
    assert.equal(s.stats.failovers, 1);
  } finally {
    s.close();
  }
});
