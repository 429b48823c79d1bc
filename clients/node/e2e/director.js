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

test("the director answers PINGs, so it is chosen over a silent first address", async () => {
  const SILENT = process.env.UDP_DIRECTOR_SILENT;
  assert.ok(SILENT, "UDP_DIRECTOR_SILENT is set by capi/tests/node.rs");
  const grant = await query(QUERY, buildQuery({ resourceType: "echo", labels: { zone: "z1" } }));
  // The director's PONG ranks it first; the silent address (listed first) ranks last.
  const s = await Session.open([SILENT, DATA], grant, { failoverAfterMs: 1000 });
  try {
    assert.equal(s.remote, DATA);
    assert.equal(await exchange(s, "js:nearest", "b:", 8000), "b:js:nearest");
    assert.equal(s.remote, DATA);
    assert.equal(s.stats.failovers, 0);
    assert.ok(s.stats.pongs >= 1, "the director's PONG was read");
  } finally {
    s.close();
  }
});
