"""formwarden benchmark: per-request time of each executable (sequential runs, so the
figure is start-up plus work) against /bin/true, peak memory, and lock contention in
64-process bursts on one key (how many timed out, how long the slowest waited).

Then (issue 7): sustained pressure on one client key (64 workers x 5 requests) for
CAPTCHA GET and contact POST against a dependency-free floor program (scripts/floor.c:
flock + read + temp + rename, 25 ms polling) and another client's requests during the
flood; 32 concurrent rotations of one token profile; each quiet and again beside two
CPU-bound busy loops. And the slowest of 1,000 CAPTCHA requests with 100,000 stored
rate-limit windows, against the median.

With --static DIR (the unpacked release archive; scripts/bench.sh passes it), the
per-request table shows the static musl build beside the glibc build of BIN_DIR.

Usage: python3 scripts/bench.py BIN_DIR [--static DIR] [--runs N] [--bursts N] [--only cgi,bursts,sustained,floods]
"""
import argparse, collections, os, re, resource, secrets, subprocess, tempfile, threading, time, urllib.parse

# The peak-memory helper (scripts/rss.c), built by scripts/bench.sh next to the floor probe.
RSS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "hooks", "rss")
SALT = "b3nchS4lt-0123456789abcdefghijklmnopqrstuvwxyz"


def site(captcha_max_get=1000000, store=""):
    d = tempfile.mkdtemp(prefix="fw-bench-")
    os.makedirs(d + "/var/config")
    with open(d + "/var/config/config.toml", "w") as f:
        f.write(f'ip_salt = "{SALT}"\ncaptcha_max_get = {captcha_max_get}\ncontact_max_post = 1000000\n'
                f'[mail]\nfrom = "B <b@example.org>"\nto = ["o@example.org"]\ntransport = "file"\n[mail.file]\ndir = "{d}/mail-out"\n'
                '[tokens.profiles.admin]\n[tokens.profiles.deploy]\nmax_tokens = 10000\n'
                # The bench posts the moment it has a challenge: no time trap.
                '[spam]\nmin_fill_seconds = 0\n' + store)
    return d


def cgi_env(root, method="GET", addr="192.0.2.1", **extra):
    env = dict(GATEWAY_INTERFACE="CGI/1.1", REQUEST_METHOD=method, REMOTE_ADDR=addr, FORMWARDEN_ROOT=root,
               SCRIPT_NAME="/cgi-bin/x", SERVER_PROTOCOL="HTTP/1.1", QUERY_STRING="")
    env.update(extra)
    return env


def run(cmd, env, body=b""):
    p = subprocess.run(cmd, env=env, input=body, capture_output=True)
    return p.stdout, p.stderr


def timed(label, n, fn, baseline=None):
    t = time.perf_counter()
    for _ in range(n):
        fn()
    ms = (time.perf_counter() - t) * 1000 / n
    rel = f"  ({ms / baseline:.1f}x /bin/true)" if baseline else ""
    print(f"  {label:<34} {ms:7.2f} ms/request{rel}")
    return ms


def answer_of(out):
    head = out.split(b"\r\n\r\n", 1)[0].decode()
    cookie = re.search(r"fw_captcha=([0-9a-f]+)", head).group(1)
    ans = re.search(r"X-Formwarden-Test-Answer: (\w+)", head).group(1)
    return cookie, ans


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bindir")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--bursts", type=int, default=5)
    ap.add_argument("--only", default="cgi,bursts,sustained,floods")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--static", help="the unpacked release archive, measured beside BIN_DIR")
    ap.add_argument("--redis-bindir", help="the same build with the Redis store (for --only store)")
    a = ap.parse_args()
    b = lambda name: os.path.join(a.bindir, name)
    only = set(a.only.split(","))
    root = site()
    if "cgi" in only:
        per_request(a, b, root, a.static)
    if "bursts" in only:
        bursts(a, b)
    if "sustained" in only:
        # Rounds alternate between quiet and loaded, and inside a round formwarden and the
        # floor probe run back to back, so that noise from the shared machine hits both.
        for r in range(a.rounds):
            print(f"\nsustained pressure (issue 7, item 8), round {r + 1}, nothing else started:")
            sustained(a, b)
            print(f"\nround {r + 1} beside two CPU-bound busy loops:")
            loops = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(2)]
            try:
                sustained(a, b)
            finally:
                for p in loops:
                    p.kill()
                    p.wait()
    if "floods" in only:
        floods(a, b)
    if "store" in only and a.redis_bindir:
        stores(a, b, lambda name: os.path.join(a.redis_bindir, name))


def redis_server():
    """A throw-away redis-server on a free loopback port, without persistence."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = tempfile.mkdtemp(prefix="fw-bench-redis-")
    p = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--dir", d], stdout=subprocess.DEVNULL)
    for _ in range(500):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1) as c:
                c.sendall(b"PING\r\n")
                if c.recv(16).startswith(b"+PONG"):
                    return p, port
        except OSError:
            time.sleep(0.01)
    raise SystemExit("redis-server did not start")


def stores(a, b_files, b_redis):
    """Files against Redis in one run: the default build on files, the Redis build on
    files (what compiling Redis in costs when it is not used) and the Redis build on a
    local redis-server, interleaved in blocks of 10; then the same one-key contention on
    both stores."""
    server, port = redis_server()
    try:
        store = f'[store]\nbackend = "redis"\nurl = "redis://127.0.0.1:{port}/0"\nprefix = "bench:"\n'
        files_root, redis_root = site(), site(store=store)
        setups = [("default build, files", b_files, files_root), ("redis build, files", b_redis, files_root),
                  ("redis build, Redis", b_redis, redis_root)]
        print(f"\nstores: per-request time, {a.runs} sequential runs each, setups interleaved in blocks of 10"
              f" (redis-server on loopback, nothing else started):")
        base = timed("/bin/true", a.runs, lambda: run(["/bin/true"], {}))
        toks = {r: run([b_redis("tokens"), "rotate", "deploy"], dict(FORMWARDEN_ROOT=r))[0].decode().split("\n")[0]
                for r in (files_root, redis_root)}

        def post_job(bb, r):
            c, ans = answer_of(run([b_files("captcha") if r == files_root else b_redis("captcha")], cgi_env(r))[0])
            body = urllib.parse.urlencode(dict(name="B", email="b@example.net", subject="s", message="m", captcha=ans)).encode()
            env = cgi_env(r, "POST", CONTENT_TYPE="application/x-www-form-urlencoded", CONTENT_LENGTH=str(len(body)),
                          HTTP_COOKIE=f"fw_captcha={c}")
            return [bb("contact")], env, body, b"Status: 200"

        cases = [
            ("captcha GET (PNG + challenge)", lambda bb, r: ([bb("captcha")], cgi_env(r), b"", b"Status: 200")),
            ("contact POST (accepted)", post_job),
            ("tokens verify GET", lambda bb, r: ([bb("tokens")], cgi_env(r, QUERY_STRING="profile=deploy",
                                                 HTTP_AUTHORIZATION=f"Bearer {toks[r]}"), b"", b"Status: 204")),
            ("tokens rotate (CLI)", lambda bb, r: ([bb("tokens"), "rotate", "deploy"], dict(FORMWARDEN_ROOT=r), b"", b"fwt_")),
        ]
        print(f"  {'':<32}" + "".join(f"  {n:>22}" for n, _, _ in setups))
        for label, job in cases:
            total = collections.Counter()
            done = 0
            while done < a.runs:
                block = min(10, a.runs - done)
                for name, bb, r in setups:
                    jobs = [job(bb, r) for _ in range(block)]
                    for cmd, env, body, want in jobs:
                        t = time.perf_counter()
                        out, _ = run(cmd, env, body)
                        total[name] += time.perf_counter() - t
                        if not out.startswith(want):
                            raise SystemExit(f"{label} ({name}): unexpected answer {out[:120]!r}")
                done += block
            cells = "".join(f"  {total[n] * 1000 / a.runs:7.2f} ms {total[n] * 1000 / a.runs / base:4.1f}x"
                            for n, _, _ in setups)
            print(f"  {label:<32}{cells}")
        print("  (mean time per request and its multiple of /bin/true)")

        print("\nstores: one client key under contention, CAPTCHA GET, limit 1000 per window:")
        for workers, each in [(8, 50), (64, 5)]:
            for name, bb, st in [("files", b_redis, ""), ("Redis", b_redis, store.replace("bench:", f"bench{workers}:"))]:
                r = site(captcha_max_get=1000, store=st)
                env = cgi_env(r, addr="198.51.100.77")

                def job():
                    t = time.perf_counter()
                    out, err = run([bb("captcha")], env)
                    return out[:12], b"Lock-Timeout" in err, time.perf_counter() - t
                t = time.perf_counter()
                res = flood(workers, each, job)
                wall = time.perf_counter() - t
                ok = sum(1 for o, _, _ in res if o.startswith(b"Status: 200"))
                timeouts = sum(1 for _, to, _ in res if to)
                other = len(res) - ok - timeouts
                lat = sorted(x for _, _, x in res)
                print(f"  {workers:2} workers x {each:3}  {name:<6} {len(res) / wall:7.1f} req/s  p50 {lat[len(lat) // 2] * 1000:6.1f} ms"
                      f"  p99 {lat[int(len(lat) * 0.99)] * 1000:6.1f} ms  ok {ok:4}  lock timeouts {timeouts:3}  other {other}")
    finally:
        server.kill()
        server.wait()


def per_request(a, b, root, static=None):
    """Sequential CGI runs of each request kind. With `static` (the unpacked release
    archive), the static musl build is measured beside the glibc build, interleaved in
    blocks of 10 so that machine noise hits both alike; contact POSTs of both builds use
    challenges made by the glibc test build (same state format), whose answer header the
    static build does not have."""
    first, err = run([b("captcha")], cgi_env(root))
    if not first.startswith(b"Status: 200"):
        raise SystemExit(f"captcha does not answer 200; fix the set-up first: {err.decode()}")
    builds = [("glibc", b)]
    if static:
        names = dict(captcha="public_html/cgi-bin/captcha.cgi", contact="public_html/cgi-bin/contact.cgi",
                     tokens="bin/tokens", spool="bin/spool")
        builds.append(("static musl", lambda n: os.path.join(static, names[n])))
    print(f"per-request time, {a.runs} sequential runs each (one process per request, as CGI), "
          f"builds interleaved in blocks of 10:")
    base = timed("/bin/true", a.runs, lambda: run(["/bin/true"], {}))
    tok = run([b("tokens"), "rotate", "deploy"], dict(FORMWARDEN_ROOT=root))[0].decode().split("\n")[0]

    def post_job(bb):
        c, ans = answer_of(run([b("captcha")], cgi_env(root))[0])
        body = urllib.parse.urlencode(dict(name="Bench", email="b@example.net", subject="s", message="m", captcha=ans)).encode()
        env = cgi_env(root, "POST", CONTENT_TYPE="application/x-www-form-urlencoded", CONTENT_LENGTH=str(len(body)),
                      HTTP_COOKIE=f"fw_captcha={c}")
        return [bb("contact")], env, body, b"Status: 200"

    cases = [
        ("captcha GET (PNG + challenge)", lambda bb: ([bb("captcha")], cgi_env(root), b"", b"Status: 200")),
        ("contact GET (form page)", lambda bb: ([bb("contact")], cgi_env(root), b"", b"Status: 200")),
        ("contact POST (verify+spool+file mail)", post_job),
        ("tokens verify GET (lock-free)", lambda bb: ([bb("tokens")], cgi_env(root, QUERY_STRING="profile=deploy",
                                                     HTTP_AUTHORIZATION=f"Bearer {tok}"), b"", b"Status: 204")),
        ("tokens rotate (CLI, durable write)", lambda bb: ([bb("tokens"), "rotate", "deploy"], dict(FORMWARDEN_ROOT=root), b"", b"fwt_")),
    ]
    head = "".join(f"  {name:>22}" for name, _ in builds)
    print(f"  {'':<38}{head}")
    for label, job in cases:
        total = {name: 0.0 for name, _ in builds}
        peak = {name: 0 for name, _ in builds}
        done = 0
        while done < a.runs:
            block = min(10, a.runs - done)
            for name, bb in builds:
                # Jobs are prepared outside the timed part (a POST needs a fresh challenge).
                jobs = [job(bb) for _ in range(block)]
                for cmd, env, body, want in jobs:
                    t = time.perf_counter()
                    p = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL)
                    p.stdin.write(body)
                    p.stdin.close()
                    out = p.stdout.read()
                    p.wait()
                    total[name] += time.perf_counter() - t
                    p.stdout.close()
                    if not out.startswith(want):
                        raise SystemExit(f"{label} ({name}): unexpected answer {out[:120]!r}")
            done += block
        # Peak memory, untimed, through scripts/rss.c (see there why not from Python).
        for name, bb in builds:
            for _ in range(5):
                cmd, env, body, _ = job(bb)
                p = subprocess.run([RSS] + cmd, env=env, input=body, capture_output=True)
                m = re.search(rb"maxrss_kib=(\d+)", p.stderr)
                peak[name] = max(peak[name], int(m.group(1)) if m else 0)
        cells = ""
        for name, _ in builds:
            ms = total[name] * 1000 / a.runs
            cells += f"  {ms:6.2f} ms {ms / base:4.1f}x {peak[name] / 1024:4.1f} MiB"
        print(f"  {label:<38}{cells}")
    print("  (each cell: mean time per request, as a multiple of /bin/true, and the peak resident memory of one process)")


def bursts(a, b):
    print(f"\nlock contention: {a.bursts} bursts of 64 processes started at once on ONE key (wait bound 300 ms):")
    for label, cmd, envf, key in [
        ("captcha GET, limit 40", [b("captcha")], lambda r: cgi_env(r, FORMWARDEN_LOG="debug"), "ratelimit_"),
        ("tokens rotate", [b("tokens"), "rotate", "deploy"], lambda r: dict(FORMWARDEN_ROOT=r, FORMWARDEN_LOG="debug"), "token_deploy"),
    ]:
        totals = collections.Counter()
        worst = 0
        holds = []
        for _ in range(a.bursts):
            r = site(captcha_max_get=40)
            env = envf(r)
            ps = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(64)]
            for p in ps:
                out, err = p.communicate()
                err = err.decode()
                if "Lock-Timeout" in err:
                    totals["timeout"] += 1
                elif out.startswith(b"Status: 429"):
                    totals["limited"] += 1
                elif out.startswith(b"Status: 200") or (p.returncode == 0 and out.startswith(b"fwt_")):
                    totals["ok"] += 1
                else:
                    raise SystemExit(f"unexpected answer: {out[:80]!r} {err[:300]}")
                for m in re.finditer(r'key="' + key + r'\w*" waited_us=(\d+)', err):
                    worst = max(worst, int(m.group(1)))
                holds += [int(m.group(1)) for m in re.finditer(r'key="' + key + r'\w*" held_us=(\d+)', err)]
        holds.sort()
        med = holds[len(holds) // 2] / 1000 if holds else 0
        print(f"  {label:<22} ok {totals['ok']:4}  429 {totals['limited']:4}  lock timeouts {totals['timeout']:3} of {64 * a.bursts}"
              f"   longest wait {worst / 1000:6.1f} ms   median hold {med:5.2f} ms")


def post_env(b, root, addr):
    """A solved contact POST for client addr (the CAPTCHA is fetched from another address,
    so that only the POST counts against addr's budget)."""
    c, ans = answer_of(run([b("captcha")], cgi_env(root, addr="198.18.0.1"))[0])
    body = urllib.parse.urlencode(dict(name="Bench", email="b@example.net", subject="s", message="m", captcha=ans)).encode()
    env = cgi_env(root, "POST", addr=addr, CONTENT_TYPE="application/x-www-form-urlencoded",
                  CONTENT_LENGTH=str(len(body)), HTTP_COOKIE=f"fw_captcha={c}")
    return env, body


def flood(workers, each, job):
    """workers threads, each running job() each times; returns the results."""
    results, lock = [], threading.Lock()
    start = threading.Barrier(workers)

    def worker():
        start.wait()
        for _ in range(each):
            r = job()
            with lock:
                results.append(r)

    ts = [threading.Thread(target=worker) for _ in range(workers)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return results


def sustained(a, b, workers=64, each=5):
    n = workers * each
    # CAPTCHA GET on one client key, with another client's requests beside the flood.
    root = site()
    other = []
    stop = threading.Event()

    def bystander():
        while not stop.is_set():
            _, err = run([b("captcha")], cgi_env(root, addr="192.0.2.200"))
            other.append(b"Lock-Timeout" in err)

    t = threading.Thread(target=bystander)
    t.start()
    res = flood(workers, each, lambda: b"Lock-Timeout" in run([b("captcha")], cgi_env(root, addr="192.0.2.100"))[1])
    stop.set()
    t.join()
    print(f"  captcha GET, one key        lock timeouts {sum(res):3} of {n}   "
          f"(another client meanwhile: {sum(other)} of {len(other)})")
    # Contact POST on one client key (each with its own solved challenge).
    root = site()
    envs = [post_env(b, root, "192.0.2.101") for _ in range(n)]
    it, itl = iter(envs), threading.Lock()

    def post():
        with itl:
            env, body = next(it)
        out, err = run([b("contact")], env, body)
        return b"Lock-Timeout" in err
    res = flood(workers, each, post)
    print(f"  contact POST, one key       lock timeouts {sum(res):3} of {n}")
    # The floor program on one lock file, without and with fsync.
    floor = os.path.join(a.bindir, "..", "floor")
    for sync in (False, True):
        d = tempfile.mkdtemp(prefix="fw-floor-")
        args = [floor, d] + (["fsync"] if sync else [])
        res = flood(workers, each, lambda: subprocess.run(args).returncode == 3)
        print(f"  floor probe{' + fsync' if sync else '        '}         lock timeouts {sum(res):3} of {n}")
    # 32 rotations of one token profile at once (durable writes).
    root = site()
    ps = [subprocess.Popen([b("tokens"), "rotate", "deploy"], env=dict(FORMWARDEN_ROOT=root),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(32)]
    timeouts = sum(b"Lock-Timeout" in p.communicate()[1] for p in ps)
    listed = run([b("tokens"), "list", "deploy"], dict(FORMWARDEN_ROOT=root))[0].decode()
    print(f"  32 rotations of one profile lock timeouts {timeouts:3} of 32   "
          f"(tokens kept: {sum(1 for l in listed.splitlines() if l.strip())})")


def floods(a, b, stored=100_000, requests=1000):
    print(f"\n{requests} CAPTCHA GETs from new clients with {stored:,} stored rate-limit windows (issue 7, item 7):")
    root = site(captcha_max_get=1000)
    base = os.path.join(root, "var/tmp/ratelimit")
    import hashlib
    now = int(time.time())
    for i in range(stored):
        key = secrets.token_hex(32)
        shard = hashlib.sha256(key.encode()).hexdigest()[:2]
        os.makedirs(os.path.join(base, shard), exist_ok=True)
        with open(os.path.join(base, shard, key + ".toml"), "w") as f:
            f.write(f"window_start = {now}\ncaptcha_get = 1\ncontact_post = 0\n")
    times = []
    for i in range(requests):
        t = time.perf_counter()
        out, err = run([b("captcha")], cgi_env(root, addr=f"2001:db8:{i // 256:x}:{i % 256:x}::1"))
        times.append((time.perf_counter() - t) * 1000)
        if not out.startswith(b"Status: 200"):
            raise SystemExit(f"unexpected: {out[:100]!r} {err[:300]!r}")
    times.sort()
    left = sum(len(fs) for _, _, fs in os.walk(base))
    print(f"  median {times[len(times) // 2]:.2f} ms   p99 {times[int(len(times) * 0.99)]:.2f} ms   "
          f"slowest {times[-1]:.2f} ms   ({times[-1] / times[len(times) // 2]:.1f}x the median); "
          f"windows stored afterwards: {left:,}")


if __name__ == "__main__":
    main()
