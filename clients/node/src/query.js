// The query protocol (SPEC §2): one JSON line out, one JSON line back, over TCP.
import net from "node:net";
import { parseAddr } from "./core.js";

/** A query that gave no token: `code` is the director's error code (no_match,
 * unauthorized, ...), "garbled" for an answer that is not one, or a socket error's code. */
export class QueryError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.name = "QueryError";
    this.code = code;
    this.detail = message;
  }
}

/**
 * The SPEC request object from friendlier options, fields in the order every client of this
 * repository writes them (see conformance/vectors.json).
 */
export function buildQuery({ resourceType, namespace, labels, annotations, status, playerId, ticket }) {
  if (typeof resourceType !== "string") throw new TypeError("resourceType is required");
  const q = { resourceType };
  if (namespace !== undefined) q.namespace = namespace;
  const asMap = (pairs) => Object.fromEntries(Array.isArray(pairs) ? pairs : Object.entries(pairs));
  if (labels && Object.keys(asMap(labels)).length) q.labelSelector = asMap(labels);
  if (annotations && Object.keys(asMap(annotations)).length) q.annotationSelector = asMap(annotations);
  if (status) q.statusQuery = { jsonPath: status.jsonPath, expectedValues: [...status.expectedValues] };
  if (playerId !== undefined) q.playerId = playerId;
  // A ticket is a JWT from the studio's backend, passed through unread.
  if (ticket !== undefined) q.ticket = ticket;
  return q;
}

/** Reads one answer line: the grant, or throws QueryError. */
export function parseAnswer(line) {
  let v;
  try {
    v = JSON.parse(line);
  } catch {
    throw new QueryError("garbled", `not a query answer: ${JSON.stringify(line.trim())}`);
  }
  if (v && typeof v.token === "string" && typeof v.ttlSeconds === "number" && v.target) {
    return {
      token: v.token,
      ttlSeconds: v.ttlSeconds,
      resumeSeconds: typeof v.resumeSeconds === "number" ? v.resumeSeconds : null,
      target: {
        namespace: v.target.namespace,
        name: v.target.name,
        address: v.target.address ?? null,
        port: v.target.port ?? null,
      },
    };
  }
  if (v && v.error && typeof v.error.code === "string") throw new QueryError(v.error.code, String(v.error.message ?? ""));
  throw new QueryError("garbled", `not a query answer: ${JSON.stringify(line.trim())}`);
}

/** How long a grant's token re-opens a session: max(resumeSeconds, ttlSeconds), in ms. */
export function reopenMs(grant) {
  return Math.max(grant.resumeSeconds ?? grant.ttlSeconds, grant.ttlSeconds) * 1000;
}

/**
 * Sends `request` (the SPEC request object, e.g. from buildQuery) to the query port
 * `queryAddr` ("ip:port") on a fresh connection; resolves with the grant.
 */
export function query(queryAddr, request, { timeoutMs = 5000 } = {}) {
  const { address, port } = parseAddr(queryAddr);
  const line = JSON.stringify(request);
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: address, port });
    let buf = "";
    let done = false;
    const finish = (fn, v) => {
      if (done) return;
      done = true;
      sock.destroy();
      fn(v);
    };
    sock.setTimeout(timeoutMs, () => finish(reject, new QueryError("timeout", `no answer within ${timeoutMs} ms`)));
    sock.setEncoding("utf8");
    sock.on("connect", () => sock.write(line + "\n"));
    sock.on("data", (chunk) => {
      buf += chunk;
      const nl = buf.indexOf("\n");
      if (nl < 0) return;
      try {
        finish(resolve, parseAnswer(buf.slice(0, nl)));
      } catch (e) {
        finish(reject, e);
      }
    });
    sock.on("error", (e) => finish(reject, new QueryError(e.code ?? "io", e.message)));
    sock.on("close", () => finish(reject, new QueryError("io", "the connection closed without an answer")));
  });
}
