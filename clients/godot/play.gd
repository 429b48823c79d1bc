# Headless runner for capi/tests/godot.rs (godot3-server --no-window -s play.gd ARGS):
#   play QUERY_HOST QUERY_PORT DATA_HOST DATA_PORT   query -> token -> session -> reset -> resume
#   vectors MAGIC_HEX TOKEN CHALLENGE_HEX REPLY_HEX  the RESPONSE to the vectors' CHALLENGE
# Prints "done" and exits 0 on success (a script error would exit 0 without "done").
extends SceneTree

const UdpDirector = preload("udp_director.gd")


func _init():
	var all = Array(OS.get_cmdline_args())
	var args = []
	var seen_script = false
	for a in all:
		if seen_script:
			args.append(a)
		elif a.ends_with("play.gd"):
			seen_script = true
	var code = 2
	if args.size() == 5 and args[0] == "play":
		code = play(args[1], int(args[2]), args[3], int(args[4]))
	elif args.size() == 5 and args[0] == "vectors":
		code = vectors(args[1], args[2], args[3], args[4])
	else:
		printerr("usage: play QH QP DH DP | vectors MAGIC TOKEN CHALLENGE REPLY; got ", args)
	if code == 0:
		print("done")
	quit(code)


func unhex(s: String) -> PoolByteArray:
	var out = PoolByteArray()
	for i in range(0, s.length(), 2):
		out.append(("0x" + s.substr(i, 2)).hex_to_int())
	return out


func exchange(session, payload: String, prefix: String) -> String:
	for _i in range(50):
		session.send(payload.to_utf8())
		var deadline = OS.get_ticks_msec() + 100
		while OS.get_ticks_msec() < deadline:
			for p in session.poll():
				var text = p.get_string_from_utf8()
				if text.begins_with(prefix):
					return text
			OS.delay_msec(5)
	return ""


func play(qh: String, qp: int, dh: String, dp: int) -> int:
	var refused = UdpDirector.query(qh, qp, {"resourceType": "no-such-type"})
	if refused["ok"] or refused["code"] != "unknown_resource_type":
		printerr("expected unknown_resource_type, got ", refused)
		return 1
	print("refused ", refused["code"])
	var first = UdpDirector.query(qh, qp, {"resourceType": "echo", "labelSelector": {"zone": "z0"}})
	var second = UdpDirector.query(qh, qp, {"resourceType": "echo", "labelSelector": {"zone": "z1"}})
	if not first["ok"] or not second["ok"]:
		printerr("queries failed: ", first, second)
		return 1
	var session = UdpDirector.Session.new(dh, dp, first["grant"]["token"])
	var reply = exchange(session, "gd:hello-a", "a:")
	print("reply ", reply)
	if reply == "":
		return 1
	session.switch_to(second["grant"]["token"])
	reply = exchange(session, "gd:hello-b", "b:")
	print("reply ", reply)
	if reply == "":
		return 1
	var resumes = session.resumes
	var deadline = OS.get_ticks_msec() + 3000
	while session.resumes == resumes and OS.get_ticks_msec() < deadline:
		session.poll()
		OS.delay_msec(10)
	if session.resumes == resumes:
		printerr("the resume rule never fired")
		return 1
	reply = exchange(session, "gd:after-resume", "b:")
	print("reply ", reply, " resumes ", session.resumes)
	return 0 if reply != "" else 1


func vectors(magic_hex: String, token: String, challenge_hex: String, reply_hex: String) -> int:
	var magic = unhex(magic_hex)
	var c = UdpDirector.classify(unhex(challenge_hex), magic)
	if c["kind"] != "challenge":
		printerr("not read as a challenge: ", c)
		return 1
	var made = UdpDirector.response_frame(magic, c["nonce"], token).hex_encode()
	if made != reply_hex:
		printerr("response ", made, " != ", reply_hex)
		return 1
	if UdpDirector.classify(unhex(challenge_hex).subarray(0, 20), magic)["kind"] != "data":
		printerr("a cut challenge must be game data")
		return 1
	print("vectors ok")
	return 0
