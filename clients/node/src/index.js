// udp-director client for Node.js: query (with tickets), UDP sessions with the resume rule,
// keepalive, challenge responses, pings, the nearest director and failover.
// Protocol: Docs/Clients.md; conformance: conformance/vectors.json.
export { query, buildQuery, parseAnswer, reopenMs, QueryError } from "./query.js";
export { Session } from "./session.js";
export { Core, DEFAULTS, parseAddr, addrKey } from "./core.js";
export * as frames from "./frames.js";
