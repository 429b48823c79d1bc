# udp-director client in pure GDScript for Godot 3 (no native library): query (with tickets),
# a UDP session with the token, the resume rule (after 500 ms of silence and every 5 s),
# challenge responses, and reset to another server. Protocol: Docs/Clients.md.
# Tested headless with Debian's godot3-server (capi/tests/godot.rs); Godot 4 differences are
# listed in Docs/engines/Godot.md.
#
#   const UdpDirector = preload("res://udp_director.gd")
#   var answer = UdpDirector.query("203.0.113.10", 9000, {"resourceType": "gameserver"})
#   if answer.ok:
#       var session = UdpDirector.Session.new("203.0.113.10", 7777, answer.grant.token)
#       # every frame: for packet in session.poll(): ...   session.send(bytes)
extends Reference

const DEFAULT_MAGIC = PoolByteArray([0xff, 0xff, 0xff, 0xff, 0x52, 0x45, 0x53, 0x45, 0x54])


# Sends one query line and reads its answer (blocking, up to timeout_ms). Returns
# {"ok": true, "grant": {token, ttlSeconds, resumeSeconds, target}} or
# {"ok": false, "code": "<the director's error code, or io/timeout/garbled>", "message": ...}.
static func query(host: String, port: int, request: Dictionary, timeout_ms := 5000) -> Dictionary:
	var tcp = StreamPeerTCP.new()
	if tcp.connect_to_host(host, port) != OK:
		return {"ok": false, "code": "io", "message": "cannot connect to %s:%d" % [host, port]}
	var deadline = OS.get_ticks_msec() + timeout_ms
	while tcp.get_status() == StreamPeerTCP.STATUS_CONNECTING and OS.get_ticks_msec() < deadline:
		OS.delay_msec(2)
	if tcp.get_status() != StreamPeerTCP.STATUS_CONNECTED:
		return {"ok": false, "code": "io", "message": "not connected to %s:%d" % [host, port]}
	tcp.put_data((to_json(request) + "\n").to_utf8())
	var buf = PoolByteArray()
	while OS.get_ticks_msec() < deadline:
		var n = tcp.get_available_bytes()
		if n == 0:
			if tcp.get_status() != StreamPeerTCP.STATUS_CONNECTED:
				break
			OS.delay_msec(2)
			continue
		buf.append_array(tcp.get_data(n)[1])
		var text = buf.get_string_from_utf8()
		var nl = text.find("\n")
		if nl >= 0:
			tcp.disconnect_from_host()
			return parse_answer(text.substr(0, nl))
	tcp.disconnect_from_host()
	return {"ok": false, "code": "timeout", "message": "no answer within %d ms" % timeout_ms}


static func parse_answer(line: String) -> Dictionary:
	var v = parse_json(line)
	if typeof(v) == TYPE_DICTIONARY and v.has("token") and v.has("ttlSeconds") and v.has("target"):
		var resume = int(v["resumeSeconds"]) if v.has("resumeSeconds") else 0
		return {"ok": true, "grant": {
			"token": v["token"], "ttlSeconds": int(v["ttlSeconds"]), "resumeSeconds": resume,
			"target": v["target"]}}
	if typeof(v) == TYPE_DICTIONARY and v.has("error"):
		return {"ok": false, "code": v["error"]["code"], "message": v["error"]["message"]}
	return {"ok": false, "code": "garbled", "message": "not a query answer: " + line}


# [magic] 0x02 [nonce] [token]: the answer to a CHALLENGE.
static func response_frame(magic: PoolByteArray, nonce: PoolByteArray, token: String) -> PoolByteArray:
	return Session.response_frame(magic, nonce, token)


# "challenge" (with "nonce"), "pong", or "data" for anything else (game data).
static func classify(datagram: PoolByteArray, magic: PoolByteArray) -> Dictionary:
	return Session.classify(datagram, magic)


# One session through the director's data port, on a connected PacketPeerUDP (packets from
# anyone else are filtered out by Godot). Call poll() every frame.
class Session:
	extends Reference

	var udp = PacketPeerUDP.new()
	var magic: PoolByteArray
	var token: String
	var silence_ms: int
	var keepalive_ms: int
	var last_heard: int
	var last_resume: int
	var resumes := 0
	var challenges_answered := 0

	func _init(host: String, port: int, grant_token: String, control_magic := PoolByteArray(), silence := 500, keepalive := 5000):
		magic = control_magic if control_magic.size() > 0 else PoolByteArray([0xff, 0xff, 0xff, 0xff, 0x52, 0x45, 0x53, 0x45, 0x54])
		token = grant_token
		silence_ms = silence
		keepalive_ms = keepalive
		udp.connect_to_host(host, port)
		last_heard = OS.get_ticks_msec()
		last_resume = last_heard
		udp.put_packet(token.to_ascii())

	func send(data: PoolByteArray) -> void:
		udp.put_packet(data)

	# Game datagrams that arrived since the last call; answers challenges, applies the
	# resume rule.
	func poll() -> Array:
		var out = []
		while udp.get_available_packet_count() > 0:
			var p = udp.get_packet()
			var c = classify(p, magic)
			if c["kind"] == "challenge":
				udp.put_packet(response_frame(magic, c["nonce"], token))
				challenges_answered += 1
			elif c["kind"] == "data":
				last_heard = OS.get_ticks_msec()
				out.append(p)
		tick()
		return out

	# The resume rule: [magic][token] after silence_ms without game data (and every
	# silence_ms while it lasts), and at least every keepalive_ms. True when it sent one.
	func tick() -> bool:
		var now = OS.get_ticks_msec()
		var since_heard = now - last_heard
		var since_sent = now - last_resume
		if (since_heard >= silence_ms and since_sent >= silence_ms) or since_sent >= keepalive_ms:
			_send_resume()
			last_resume = now
			resumes += 1
			return true
		return false

	# Moves the session to a new token's server (same socket).
	func switch_to(new_token: String) -> void:
		token = new_token
		_send_resume()
		last_resume = OS.get_ticks_msec()

	func _send_resume() -> void:
		var d = PoolByteArray(magic)
		d.append_array(token.to_ascii())
		udp.put_packet(d)

	static func response_frame(control_magic: PoolByteArray, nonce: PoolByteArray, tok: String) -> PoolByteArray:
		var out = PoolByteArray(control_magic)
		out.append(0x02)  # TAG_RESPONSE
		out.append_array(nonce)
		out.append_array(tok.to_ascii())
		return out

	# CHALLENGE is exactly magic + 1 + 16 bytes, PONG magic + 25; anything else is game data.
	static func classify(datagram: PoolByteArray, control_magic: PoolByteArray) -> Dictionary:
		var m = control_magic.size()
		if datagram.size() > m and datagram.subarray(0, m - 1).hex_encode() == control_magic.hex_encode():
			var body = datagram.size() - m
			if datagram[m] == 0x01 and body == 17:
				return {"kind": "challenge", "nonce": datagram.subarray(m + 1, m + 16)}
			if datagram[m] == 0x04 and body == 25:
				return {"kind": "pong"}
		return {"kind": "data"}
