#!/usr/bin/env python3
"""Instructions per forwarded datagram: the director under callgrind, loopback only.

usage: callgrind.py DIRECTOR_BINARY ROUND_TRIPS [CLIENTS=1] [BUSY_POLL_MICROS=0] [TAG]

Starts an echo backend (a thread of this script) and the director under
`valgrind --tool=callgrind` on fixed loopback ports (a static mapping, two data workers),
asks the query port for one token per client, opens each session and makes one round trip
through it, then zeroes callgrind's counters, runs ROUND_TRIPS closed-loop round trips
(bounded in count and by 600 s), dumps, stops the director and prints
Ir / (2 x round trips answered): every instruction of the director's process (all threads)
per datagram forwarded, either direction. busyPollMicros defaults to 0 here: a busy poll spins
for wall-clock time, which valgrind stretches, so its instruction count is not repeatable.
Needs valgrind (callgrind_control). See Docs/Benchmarks.md.
"""
import json, os, socket, subprocess, sys, threading, time, glob, re, signal

exe = sys.argv[1]; N = int(sys.argv[2]); C = int(sys.argv[3]) if len(sys.argv) > 3 else 1
busy = int(sys.argv[4]) if len(sys.argv) > 4 else 0
tag = sys.argv[5] if len(sys.argv) > 5 else "run"
base = 21000 + (os.getpid() % 500) * 8
qport, dport, aport, bport = base, base + 1, base + 2, base + 3
work = f"/tmp/callgrind-{tag}-{os.getpid()}"; os.makedirs(work, exist_ok=True)

stop = threading.Event()
echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); echo.bind(("127.0.0.1", bport)); echo.settimeout(0.2)
def run_echo():
    while not stop.is_set():
        try:
            d, a = echo.recvfrom(65536)
        except socket.timeout:
            continue
        echo.sendto(d, a)
threading.Thread(target=run_echo, daemon=True).start()

cfg = f"""bindAddress: 127.0.0.1
queryPort: {qport}
dataPort: {dport}
adminPort: {aport}
dataWorkers: 2
busyPollMicros: {busy}
maxSessions: 100000
limits: {{queryRatePerSecond: 100000, queryBurst: 100000, maxTokens: 1000000}}
resourceQueryMapping:
  echo:
    static:
      - {{name: t0, address: "127.0.0.1", port: {bport}}}
"""
open(f"{work}/config.yaml", "w").write(cfg)
out = f"{work}/callgrind.out"
proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p",
                         exe, "--config", f"{work}/config.yaml", "--log-format", "json"],
                        stdout=subprocess.DEVNULL, stderr=open(f"{work}/stderr", "w"),
                        env=dict(os.environ, RUST_LOG="warn"))
def query():
    s = socket.create_connection(("127.0.0.1", qport), timeout=5)
    s.sendall(b'{"resourceType":"echo"}\n')
    line = b""
    while not line.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk: break
        line += chunk
    s.close()
    return json.loads(line)["token"]
deadline = time.time() + 120
tokens = None
while time.time() < deadline and proc.poll() is None:
    try:
        tokens = [query() for _ in range(C)]; break
    except (OSError, KeyError, ValueError):
        time.sleep(0.5)
if tokens is None: proc.kill(); sys.exit("no token")
clients = []
for t in tokens:
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.bind(("127.0.0.1", 0)); c.settimeout(2.0)
    c.sendto(t.encode(), ("127.0.0.1", dport)); clients.append(c)
time.sleep(1.0)
payload = b"x" * 64
for c in clients:  # a first round trip per session
    for _ in range(5):
        c.sendto(payload, ("127.0.0.1", dport))
        try: c.recvfrom(2048); break
        except socket.timeout: pass
time.sleep(0.5)
subprocess.run(["callgrind_control", "--zero", str(proc.pid)], stdout=subprocess.DEVNULL, check=True)
replies = 0; lost = 0
t0 = time.time(); limit = 600
per = N // C
if C == 1:
    c = clients[0]
    for i in range(N):
        c.sendto(payload, ("127.0.0.1", dport))
        try: c.recvfrom(2048); replies += 1
        except socket.timeout: lost += 1
        if time.time() - t0 > limit: break
else:
    import selectors
    sel = selectors.DefaultSelector()
    for i, c in enumerate(clients):
        c.setblocking(False); sel.register(c, selectors.EVENT_READ, i)
    sent = [0] * C
    for i, c in enumerate(clients): c.sendto(payload, ("127.0.0.1", dport)); sent[i] = 1
    outstanding = C
    while outstanding and time.time() - t0 < limit:
        ev = sel.select(2.0)
        if not ev: lost += outstanding; break
        for key, _ in ev:
            i = key.data; c = clients[i]
            try: c.recvfrom(2048)
            except BlockingIOError: continue
            replies += 1
            if sent[i] < per: c.sendto(payload, ("127.0.0.1", dport)); sent[i] += 1
            else: outstanding -= 1
elapsed = time.time() - t0
subprocess.run(["callgrind_control", "--dump", str(proc.pid)], stdout=subprocess.DEVNULL, check=True)
time.sleep(1.0)
proc.send_signal(signal.SIGTERM)
try: proc.wait(timeout=60)
except subprocess.TimeoutExpired: proc.kill()
stop.set()
# the dump after zeroing: the file with suffix .1 (per thread dumps are summed in totals line)
files = sorted(glob.glob(f"{out}.{proc.pid}.1*"))
total = 0
for f in files:
    for line in open(f):
        if line.startswith("totals:") or line.startswith("summary:"):
            total += int(line.split()[1]); break
print(json.dumps({"tag": tag, "exe": exe, "clients": C, "busy_us": busy, "replies": replies, "lost": lost,
                  "seconds": round(elapsed, 1), "Ir": total, "Ir_per_datagram": round(total / max(1, 2 * replies), 1),
                  "files": files}))
