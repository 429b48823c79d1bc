// The data port's datagrams (SPEC §3, §7; Docs/Clients.md), byte for byte:
//
//   [token]                                              TOKEN     client -> director
//   [magic][token]                                       RESUME    client -> director
//   [magic] 0x01 [nonce: 16]                             CHALLENGE director -> client
//   [magic] 0x02 [nonce: 16] [token]                     RESPONSE  client -> director
//   [magic] 0x03 [id: 8] [zeros: 16]                     PING      client -> director
//   [magic] 0x04 [id: 8] [receive ns: 8] [send ns: 8]    PONG      director -> client
//
// A PING is as long as its PONG (magic + 25 bytes: 34 with the default magic).

/** The default `controlPacketMagicBytes`: FF FF FF FF 'R' 'E' 'S' 'E' 'T'. */
export const DEFAULT_MAGIC = Buffer.from("ffffffff5245534554", "hex");
export const MAX_MAGIC_LEN = 32;
export const MAX_TOKEN_LEN = 128;
export const NONCE_LEN = 16;
export const PING_ID_LEN = 8;
/** After the magic: tag 1 + id 8 + receive 8 + send 8. */
export const PONG_BODY_LEN = 1 + PING_ID_LEN + 8 + 8;
export const CHALLENGE_BODY_LEN = 1 + NONCE_LEN;
export const TAG = Object.freeze({ CHALLENGE: 0x01, RESPONSE: 0x02, PING: 0x03, PONG: 0x04 });

/** @param {Uint8Array} token 1..=128 printable ASCII bytes (never taken for a tag). */
export function isToken(token) {
  return token.length > 0 && token.length <= MAX_TOKEN_LEN && token.every((b) => b >= 0x21 && b <= 0x7e);
}

export function token(tok) {
  return Buffer.from(tok);
}

export function resume(magic, tok) {
  return Buffer.concat([magic, Buffer.from(tok)]);
}

export function challenge(magic, nonce) {
  return Buffer.concat([magic, Buffer.from([TAG.CHALLENGE]), nonce]);
}

export function response(magic, nonce, tok) {
  return Buffer.concat([magic, Buffer.from([TAG.RESPONSE]), nonce, Buffer.from(tok)]);
}

export function ping(magic, id) {
  return Buffer.concat([magic, Buffer.from([TAG.PING]), id, Buffer.alloc(16)]);
}

/** @param {bigint} receiveNs @param {bigint} sendNs */
export function pong(magic, id, receiveNs, sendNs) {
  const times = Buffer.alloc(16);
  times.writeBigUInt64BE(receiveNs, 0);
  times.writeBigUInt64BE(sendNs, 8);
  return Buffer.concat([magic, Buffer.from([TAG.PONG]), id, times]);
}

/**
 * Reads a datagram: null when it does not start with `magic` (game data or a bare token),
 * a frame object when it is a well-formed frame, `{ kind: "invalid", reason }` otherwise.
 * @param {Buffer} d @param {Buffer} magic
 */
export function parse(d, magic) {
  if (magic.length === 0 || d.length < magic.length || !d.subarray(0, magic.length).equals(magic)) return null;
  const body = d.subarray(magic.length);
  const invalid = (reason) => ({ kind: "invalid", reason });
  switch (body[0]) {
    case TAG.CHALLENGE:
      if (body.length !== CHALLENGE_BODY_LEN) return invalid(`CHALLENGE must be ${magic.length + CHALLENGE_BODY_LEN} bytes, found ${d.length}`);
      return { kind: "challenge", nonce: Buffer.from(body.subarray(1)) };
    case TAG.RESPONSE: {
      const tok = body.subarray(CHALLENGE_BODY_LEN);
      if (body.length <= CHALLENGE_BODY_LEN || !isToken(tok)) return invalid("RESPONSE must end with a token");
      return { kind: "response", nonce: Buffer.from(body.subarray(1, CHALLENGE_BODY_LEN)), token: tok.toString() };
    }
    case TAG.PING:
      if (body.length !== PONG_BODY_LEN) return invalid(`PING must be ${magic.length + PONG_BODY_LEN} bytes, found ${d.length}`);
      return { kind: "ping", id: Buffer.from(body.subarray(1, 9)) };
    case TAG.PONG:
      if (body.length !== PONG_BODY_LEN) return invalid(`PONG must be ${magic.length + PONG_BODY_LEN} bytes, found ${d.length}`);
      return {
        kind: "pong",
        id: Buffer.from(body.subarray(1, 9)),
        receiveNs: body.readBigUInt64BE(9),
        sendNs: body.readBigUInt64BE(17),
      };
    default:
      if (isToken(body)) return { kind: "resume", token: body.toString() };
      return invalid(body.length === 0 ? "the magic alone" : `unknown tag 0x${body[0].toString(16)}`);
  }
}
