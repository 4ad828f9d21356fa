"""formwarden benchmark (issue 10). Every comparison is a ratio inside one run: the machines
this runs on are shared and noisy, so a figure is only ever set beside a baseline measured
in the same minutes (builds and baselines interleaved in blocks of 10).

Sections (--only, comma-separated; all by default):
  cgi         one process per request (CGI): p50/p90 of each endpoint and path, beside
              /bin/true and the floor probe of the same linkage (scripts/floor.c: flock +
              read + temp write + rename of one small file), and the peak RSS of one process
  contention  8 workers x 200 CAPTCHA GETs on one client key and on one key per worker,
              64 workers x 5 on one key (quiet and beside two busy loops), the floor probe
              beside each; stored counter against admitted answers; one-key contact POSTs;
              32 rotations of one token profile
  floods      CAPTCHA GETs from new clients with 100,000 stored rate-limit windows
  nginx       FastCGI against CGI (fcgiwrap) through one nginx, with wrk at 8 and 32
              connections: CAPTCHA GET and token verify
  store       the files store against the Redis store (needs --redis-bindir)
Then the targets, PASS/MISS, from the ratios measured above.

Builds: BIN_DIR is the glibc build (with the test-hooks feature: contact POSTs need the
CAPTCHA answer, which the glibc build's header gives; challenges are state files any build
reads). --static DIR adds the unpacked static release archive; --build NAME=DIR adds more
(say, allocator candidates), either layout. Each build's linkage (dynamic or static) is
read from its ELF header and picks the floor probe of the same linkage.

Usage: python3 scripts/bench.py BIN_DIR [--static DIR] [--build NAME=DIR ...]
         [--floor PATH] [--floor-static PATH] [--rss PATH] [--redis-bindir DIR]
         [--only SECTIONS] [--quick] [--doc docs/PERFORMANCE.md]
"""
import argparse, collections, datetime, hashlib, io, os, platform, re, resource, secrets, shutil, signal, socket, \
    struct, subprocess, sys, tempfile, threading, time, urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SALT = "b3nchS4lt-0123456789abcdefghijklmnopqrstuvwxyz"
MIB = 1024 * 1024


# ---------------------------------------------------------------------------------------
# Output: everything printed is also kept for --doc
# ---------------------------------------------------------------------------------------

class Tee(io.TextIOBase):
    def __init__(self, out):
        self.out, self.buf = out, io.StringIO()

    def write(self, s):
        self.out.write(s)
        self.out.flush()
        self.buf.write(s)
        return len(s)

    def flush(self):
        self.out.flush()


def cpu_ticks():
    """{pid: (command, session, utime + stime in clock ticks)} of every process."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        f = stat[stat.rindex(")") + 2:].split()
        out[int(pid)] = (comm, int(f[3]), int(f[11]) + int(f[12]))
    return out


def others():
    """What else runs on the machine: the load, any cargo/rustc (another build), and the
    processes outside this benchmark that used the CPU over the last 0.3 s."""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    a = cpu_ticks()
    time.sleep(0.3)
    b = cpu_ticks()
    own_session = os.getsid(0)
    hz = os.sysconf("SC_CLK_TCK")
    builds = collections.Counter(c for c, _, _ in b.values() if c in ("cargo", "rustc", "cc1", "cc", "ld"))
    busy = collections.Counter()
    for pid, (comm, sid, t) in b.items():
        # The benchmark's own processes (its session; its servers lead their own sessions
        # but are named here) are the measurement, not noise.
        if sid == own_session or comm in ("nginx", "wrk", "redis-server", "fcgiwrap", "captcha", "tokens", "contact"):
            continue
        if pid in a and t > a[pid][2]:
            busy[comm] += (t - a[pid][2]) / hz / 0.3 * 100
    top = ", ".join(f"{c} {p:.0f}%" for c, p in busy.most_common(4) if p >= 5)
    builds = ", ".join(f"{n} {c}" for c, n in sorted(builds.items())) or "no cargo/rustc/cc"
    return f"load {load}; {builds}; other CPU users: {top or 'none above 5%'}"


def section(title):
    print(f"\n## {title}\n   [machine at start: {others()}]")


# ---------------------------------------------------------------------------------------
# Sites, builds, processes
# ---------------------------------------------------------------------------------------

def site(captcha_max_get=1_000_000, store="", extra=""):
    d = tempfile.mkdtemp(prefix="fw-bench-")
    os.chmod(d, 0o755)
    os.makedirs(d + "/var/config")
    with open(d + "/var/config/config.toml", "w") as f:
        f.write(f'ip_salt = "{SALT}"\ncaptcha_max_get = {captcha_max_get}\ncontact_max_post = 1000000\n'
                'max_challenges = 1000000\n' + extra +
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


def spawn(cmd, env, body=b""):
    """One process, timed from before the fork to after its exit; (seconds, stdout, stderr,
    exit code)."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(body)
    return time.perf_counter() - t, out, err, p.returncode


def cpu_children():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def spawn_cpu(cmd, env, body=b""):
    """spawn(), plus the CPU time (user + system) the process used: the growth of this
    process's reaped-children total, so only for spawns made one at a time."""
    c = cpu_children()
    dt, out, err, rc = spawn(cmd, env, body)
    return dt, cpu_children() - c, out, err


def syscalls(cmd, env, body=b""):
    """System calls of one run (strace -f -c): (total, {name: calls})."""
    with tempfile.NamedTemporaryFile(prefix="fw-strace-", suffix=".txt") as f:
        subprocess.run(["strace", "-f", "-c", "-q", "-o", f.name] + cmd, env=env, input=body, capture_output=True)
        calls = {}
        for line in open(f.name):
            x = line.split()
            if len(x) >= 5 and x[0][0].isdigit() and x[-1] != "total":
                try:
                    calls[x[-1]] = int(x[3])
                except ValueError:
                    pass
    return sum(calls.values()), calls


def answer_of(out):
    head = out.split(b"\r\n\r\n", 1)[0].decode()
    cookie = re.search(r"fw_captcha=([0-9a-f]+)", head).group(1)
    ans = re.search(r"X-Formwarden-Test-Answer: (\w+)", head).group(1)
    return cookie, ans


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")


def is_static(path):
    """True when the ELF file has no PT_INTERP program header (no dynamic loader)."""
    with open(path, "rb") as f:
        h = f.read(64)
        if h[:4] != b"\x7fELF" or h[4] != 2:
            return False
        phoff, = struct.unpack_from("<Q", h, 32)
        phentsize, phnum = struct.unpack_from("<HH", h, 54)
        f.seek(phoff)
        ph = f.read(phentsize * phnum)
    return not any(struct.unpack_from("<I", ph, i * phentsize)[0] == 3 for i in range(phnum))


class Build:
    """One set of executables: plain names (a cargo target folder) or the release archive's
    layout (public_html/cgi-bin/*.cgi, bin/)."""

    def __init__(self, name, d):
        self.name, self.dir = name, d
        archive = os.path.exists(os.path.join(d, "public_html/cgi-bin/captcha.cgi"))
        self.paths = {p: os.path.join(d, f"public_html/cgi-bin/{p}.cgi" if archive else p)
                      for p in ("captcha", "contact")}
        self.paths["tokens"] = os.path.join(d, "bin/tokens" if archive else "tokens")
        for p in self.paths.values():
            if not os.access(p, os.X_OK):
                raise SystemExit(f"build {name}: no executable {p}")
        self.static = is_static(self.paths["captcha"])

    def __call__(self, prog):
        return self.paths[prog]

    @property
    def linkage(self):
        return "static" if self.static else "dynamic"

    def size(self, prog):
        return os.path.getsize(self.paths[prog])


def rss_of(rss, cmd, env, body=b""):
    """Peak RSS of one process in KiB, through scripts/rss.c (see there why not from Python)."""
    p = subprocess.run([rss] + cmd, env=env, input=body, capture_output=True)
    m = re.search(rb"maxrss_kib=(\d+)", p.stderr)
    return int(m.group(1)) if m else 0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Procs:
    """Processes this benchmark started, each leading its own process group; stopped by
    their own ids (SIGTERM to the group, SIGKILL after a grace period)."""

    def __init__(self):
        self.ps = []

    def start(self, cmd, log, env=None):
        f = open(log, "ab")
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=f, env=env, start_new_session=True)
        f.close()
        self.ps.append(p)
        return p

    def stop(self):
        for p in reversed(self.ps):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in reversed(self.ps):
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
            # Children of the group leader (fcgiwrap's workers) may outlive it briefly.
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.ps = []


def wait_for(check, what, seconds=15):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise SystemExit(f"{what} did not come up")


# ---------------------------------------------------------------------------------------
# Section: one process per request
# ---------------------------------------------------------------------------------------

def per_request(a, R):
    """Sequential CGI runs of each request kind, builds and baselines interleaved in blocks
    of 10 so that machine noise hits all alike. POSTs of every build use challenges made by
    the glibc test build (same state format), whose answer header the others lack."""
    g = R.builds[0]
    root = site()
    limited = site(captcha_max_get=1)
    run([g("captcha")], cgi_env(limited, addr="192.0.2.9"))  # the one allowed image
    first, err = run([g("captcha")], cgi_env(root))
    if not first.startswith(b"Status: 200"):
        raise SystemExit(f"captcha does not answer 200; fix the set-up first: {err.decode()}")
    tok = run([g("tokens"), "rotate", "deploy"], dict(FORMWARDEN_ROOT=root))[0].decode().split("\n")[0]
    floor_dir = {k: tempfile.mkdtemp(prefix="fw-floor-") for k in R.floors}

    def post_job(answer):
        def job(bb):
            c, ans = answer_of(run([g("captcha")], cgi_env(root, addr="198.18.0.1"))[0])
            body = urllib.parse.urlencode(dict(name="Bench", email="b@example.net", subject="s", message="m",
                                               captcha=ans if answer else "WRONG")).encode()
            env = cgi_env(root, "POST", CONTENT_TYPE="application/x-www-form-urlencoded",
                          CONTENT_LENGTH=str(len(body)), HTTP_COOKIE=f"fw_captcha={c}")
            return [bb("contact")], env, body, b"Status: 200" if answer else b"Status: 403"
        return job

    baselines = [("/bin/true", lambda: (["/bin/true"], {}, b"", None))] + [
        (f"floor probe ({k})", (lambda k: lambda: ([R.floors[k], floor_dir[k]], {}, b"", None))(k)) for k in R.floors]
    cases = [
        ("captcha", "captcha GET, PNG", lambda bb: ([bb("captcha")], cgi_env(root), b"", b"Status: 200")),
        ("captcha_json", "captcha GET, JSON", lambda bb: ([bb("captcha")], cgi_env(root, HTTP_ACCEPT="application/json"),
                                                          b"", b"Status: 200")),
        ("captcha_429", "captcha GET, 429 (over the limit)",
         lambda bb: ([bb("captcha")], cgi_env(limited, addr="192.0.2.9"), b"", b"Status: 429")),
        ("contact_get", "contact GET (form page)", lambda bb: ([bb("contact")], cgi_env(root), b"", b"Status: 200")),
        ("post_refused", "contact POST refused by the CAPTCHA", post_job(False)),
        ("post_ok", "contact POST accepted (file mail)", post_job(True)),
        ("verify", "token verify (lock-free)", lambda bb: ([bb("tokens")], cgi_env(root, QUERY_STRING="profile=deploy",
                                                           HTTP_AUTHORIZATION=f"Bearer {tok}"), b"", b"Status: 204")),
        # The admin profile keeps its default bound (16 tokens), so every rotation writes a
        # list of the same size, as on a real site.
        ("rotate", "token rotate (CLI, durable write)",
         lambda bb: ([bb("tokens"), "rotate", "admin"], dict(FORMWARDEN_ROOT=root), b"", b"fwt_")),
    ]
    section(f"Per request, one process per request (CGI): p50/p90 of {a.runs} sequential spawns each, "
            "builds and baselines interleaved in blocks of 10")
    base, base_cpu = collections.defaultdict(list), collections.defaultdict(list)
    samples, cpus = collections.defaultdict(list), collections.defaultdict(list)
    peak, sys_calls = {}, {}
    for key, label, job in cases:
        done = 0
        while done < a.runs:
            block = min(10, a.runs - done)
            for bname, bjob in baselines:
                for _ in range(block):
                    cmd, env, body, _ = bjob()
                    dt, cpu, _, _ = spawn_cpu(cmd, env, body)
                    base[bname].append(dt)
                    base_cpu[bname].append(cpu)
            for b in R.builds:
                # Jobs are prepared outside the timed part (a POST needs a fresh challenge).
                jobs = [job(b) for _ in range(block)]
                for cmd, env, body, want in jobs:
                    dt, cpu, out, err = spawn_cpu(cmd, env, body)
                    if not out.startswith(want):
                        raise SystemExit(f"{label} ({b.name}): unexpected answer {out[:120]!r} {err[:300]!r}")
                    samples[key, b.name].append(dt)
                    cpus[key, b.name].append(cpu)
            done += block
        for b in R.builds:
            peak[key, b.name] = max(rss_of(R.rss, *job(b)[:3]) for _ in range(5))
            if a.profile:
                sys_calls[key, b.name] = syscalls(*job(b)[:3])
    for bname, bjob in baselines:
        peak[bname] = max(rss_of(R.rss, *bjob()[:3]) for _ in range(5))
        if a.profile:
            sys_calls[bname] = syscalls(*bjob()[:3])

    true50 = pct(base["/bin/true"], 0.5)
    sc = lambda k: f"  {sys_calls[k][0]:4} syscalls" if k in sys_calls else ""
    print("  baselines (pooled over all rows):")
    for bname, _ in baselines:
        xs = base[bname]
        print(f"    {bname:<32} p50 {pct(xs, .5) * 1000:6.2f} ms  p90 {pct(xs, .9) * 1000:6.2f} ms"
              f"  {pct(xs, .5) / true50:4.2f}x /bin/true  CPU p50 {pct(base_cpu[bname], .5) * 1000:5.2f} ms"
              f"  peak RSS {peak[bname] / 1024:4.2f} MiB{sc(bname)}")
    R.true50 = true50
    R.floor50 = {k: pct(base[f"floor probe ({k})"], 0.5) for k in R.floors}
    for b in R.builds:
        fl = R.floor50[b.linkage]
        print(f"\n  {b.name} ({b.linkage}; ratios against /bin/true and the {b.linkage} floor probe):")
        print(f"    {'':<36} {'p50':>8} {'p90':>8} {'x true':>7} {'x floor':>8} {'CPU p50':>8} {'peak RSS':>9}")
        for key, label, _ in cases:
            xs = samples[key, b.name]
            p50 = pct(xs, .5)
            R.cgi[key, b.name] = dict(p50=p50, p90=pct(xs, .9), rss=peak[key, b.name], cpu=pct(cpus[key, b.name], .5))
            print(f"    {label:<36} {p50 * 1000:5.2f} ms {pct(xs, .9) * 1000:5.2f} ms {p50 / true50:6.2f}x "
                  f"{p50 / fl:7.2f}x {R.cgi[key, b.name]['cpu'] * 1000:5.2f} ms {peak[key, b.name] / 1024:5.2f} MiB"
                  f"{sc((key, b.name))}")
    print("  (CPU: user + system time of the process; peak RSS: the largest of 5 runs, through the static rss helper;"
          + (" syscalls: one run under strace -f -c" if a.profile else "") + ")")
    if a.profile:
        print("  system calls of one run, the most frequent (refused POST, CAPTCHA GET, token verify; floor probes):")
        for k in [(key, b.name) for key in ("post_refused", "captcha", "verify") for b in R.builds] + [
                n for n, _ in baselines[1:]]:
            total, calls = sys_calls[k]
            name = " ".join(k) if isinstance(k, tuple) else k
            print(f"    {name:<30} {total:4}: " + ", ".join(
                f"{c} {n}" for c, n in sorted(calls.items(), key=lambda kv: -kv[1])[:9]))
    if len(R.builds) > 1:
        print("\n  p50 of each build as a multiple of the first (" + R.builds[0].name + "):")
        for key, label, _ in cases:
            cells = "  ".join(f"{b.name} {R.cgi[key, b.name]['p50'] / R.cgi[key, R.builds[0].name]['p50']:5.2f}x"
                              for b in R.builds[1:])
            print(f"    {label:<36} {cells}")
        print("  executable sizes (bytes): " + "; ".join(
            f"{b.name}: " + ", ".join(f"{p} {b.size(p):,}" for p in ("captcha", "contact", "tokens")) for b in R.builds))


# ---------------------------------------------------------------------------------------
# Section: contention
# ---------------------------------------------------------------------------------------

def flood(workers, each, job):
    """workers threads started together, each running job(worker) each times; returns
    the results and the wall time."""
    results, lock = [], threading.Lock()
    start = threading.Barrier(workers + 1)

    def worker(i):
        start.wait()
        for _ in range(each):
            r = job(i)
            with lock:
                results.append(r)

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for t in ts:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    return results, time.perf_counter() - t0


def stored_windows(root):
    """Sum of the CAPTCHA counters over every stored rate-limit window."""
    total = 0
    for d, _, fs in os.walk(os.path.join(root, "var/tmp/ratelimit")):
        for f in fs:
            if f.endswith(".toml"):
                m = re.search(r"captcha_get\s*=\s*(\d+)", open(os.path.join(d, f)).read())
                total += int(m.group(1)) if m else 0
    return total


def stored_floor(dirs):
    total = 0
    for d in dirs:
        try:
            m = re.search(r"count = (\d+)", open(os.path.join(d, "floor.toml")).read())
            total += int(m.group(1)) if m else 0
        except FileNotFoundError:
            pass
    return total


def captcha_contention(b, workers, each, one_key):
    root = site()
    env = [cgi_env(root, addr="192.0.2.100" if one_key else f"192.0.2.{10 + i}", FORMWARDEN_LOG="debug")
           for i in range(workers)]

    def job(i):
        dt, out, err, _ = spawn([b("captcha")], env[i])
        kind = "ok" if out.startswith(b"Status: 200") else "timeout" if b"Lock-Timeout" in err else "other"
        e = err.decode(errors="replace")
        waits = [int(x) for x in re.findall(r'key="ratelimit_\w*" waited_us=(\d+)', e)]
        holds = [int(x) for x in re.findall(r'key="ratelimit_\w*" held_us=(\d+)', e)]
        return kind, dt, waits, holds
    res, wall = flood(workers, each, job)
    return summarize(res, wall, stored_windows(root))


def floor_contention(floor, workers, each, one_key):
    base = tempfile.mkdtemp(prefix="fw-floor-")
    dirs = [base] if one_key else [os.path.join(base, str(i)) for i in range(workers)]
    for d in dirs:
        os.makedirs(d, exist_ok=True)

    def job(i):
        dt, _, _, rc = spawn([floor, dirs[0 if one_key else i]], {})
        return {0: "ok", 3: "timeout"}.get(rc, "other"), dt, [], []
    res, wall = flood(workers, each, job)
    return summarize(res, wall, stored_floor(dirs))


def summarize(res, wall, stored):
    c = collections.Counter(k for k, _, _, _ in res)
    lat = [dt for _, dt, _, _ in res]
    waits = [w for _, _, ws, _ in res for w in ws]
    holds = sorted(h for _, _, _, hs in res for h in hs)
    return dict(n=len(res), rps=len(res) / wall, p50=pct(lat, .5), p99=pct(lat, .99), max=max(lat), ok=c["ok"],
                timeouts=c["timeout"], other=c["other"], stored=stored,
                wait_max=max(waits) / 1000 if waits else None, hold50=pct(holds, .5) / 1000 if holds else None)


def show(label, s):
    extra = ""
    if s["hold50"] is not None:
        extra = f"  hold p50 {s['hold50']:5.2f} ms, longest wait {s['wait_max']:6.1f} ms"
    good = "=" if s["stored"] == s["ok"] else "!="
    print(f"    {label:<26} {s['rps']:7.1f} req/s  p50 {s['p50'] * 1000:6.1f}  p99 {s['p99'] * 1000:6.1f}"
          f"  max {s['max'] * 1000:6.1f} ms  timeouts {s['timeouts']:3}  other {s['other']:2}"
          f"  stored {s['stored']:5} {good} admitted {s['ok']:5}{extra}")


def contention(a, R):
    w8, e8 = a.c8
    w64, e64 = a.c64
    section(f"Contention: CAPTCHA GET (rate-limit lock per client key; wait bound 300 ms), each build beside "
            f"the floor probe of its linkage, run back to back")
    for title, workers, each, one_key, loops in [
            (f"{w8} workers x {e8}, ONE client key", w8, e8, True, False),
            (f"{w8} workers x {e8}, one key per worker (no lock shared)", w8, e8, False, False),
            (f"{w64} workers x {e64}, ONE client key", w64, e64, True, False),
            (f"{w64} workers x {e64}, ONE client key, beside two CPU-bound busy loops", w64, e64, True, True)]:
        print(f"  {title}:   [{others()}]")
        busy = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(2)] if loops else []
        try:
            for b in R.builds:
                s = captcha_contention(b, workers, each, one_key)
                f = floor_contention(R.floors[b.linkage], workers, each, one_key)
                show(b.name, s)
                show(f"floor probe ({b.linkage})", f)
                R.cont[title.split(",")[0], one_key, loops, b.name] = (s, f)
        finally:
            for p in busy:
                p.kill()
                p.wait()
    print("    (latency of one request from spawn to exit; stored: the counters on disk afterwards, which must\n"
          "     equal the answers admitted; hold/wait from the debug log of the rate-limit lock)")

    # Contact POST on one client key (each with its own solved challenge) and 32 rotations.
    g = R.builds[0]
    print(f"  contact POST accepted, {w64} workers x {e64}, ONE client key; 32 rotations of one token profile at once:")
    for b in R.builds:
        root = site()
        envs = []
        for _ in range(w64 * e64):
            c, ans = answer_of(run([g("captcha")], cgi_env(root, addr="198.18.0.1"))[0])
            body = urllib.parse.urlencode(dict(name="B", email="b@example.net", subject="s", message="m",
                                               captcha=ans)).encode()
            envs.append((cgi_env(root, "POST", addr="192.0.2.101", CONTENT_TYPE="application/x-www-form-urlencoded",
                                 CONTENT_LENGTH=str(len(body)), HTTP_COOKIE=f"fw_captcha={c}"), body))
        it, itl = iter(envs), threading.Lock()

        def post(_):
            with itl:
                env, body = next(it)
            dt, out, err, _ = spawn([b("contact")], env, body)
            kind = ("ok" if out.startswith(b"Status: 200") else "queued" if out.startswith(b"Status: 202")
                    else "timeout" if b"Lock-Timeout" in err else "other")
            return kind, dt, [], []
        res, wall = flood(w64, e64, post)
        queued = sum(1 for k, _, _, _ in res if k == "queued")
        count = lambda d: len(os.listdir(os.path.join(root, d))) if os.path.isdir(os.path.join(root, d)) else 0
        s = summarize(res, wall, count("mail-out"))
        spooled = count("var/spool/new")
        root = site()
        ps = [subprocess.Popen([b("tokens"), "rotate", "deploy"], env=dict(FORMWARDEN_ROOT=root),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(32)]
        outs = [p.communicate() for p in ps]
        timeouts = sum(b"Lock-Timeout" in e for _, e in outs)
        issued = sum(o.startswith(b"fwt_") for o, _ in outs)
        listed = run([b("tokens"), "list", "deploy"], dict(FORMWARDEN_ROOT=root))[0].decode()
        kept = len(re.findall(r"^[0-9a-f]{12}\t", listed, re.M))
        print(f"    {b.name:<14} POST: {s['rps']:6.1f} req/s  p50 {s['p50'] * 1000:6.1f}  p99 {s['p99'] * 1000:6.1f} ms"
              f"  timeouts {s['timeouts']:3}  other {s['other']:2}  200 sent {s['ok']}, 202 queued {queued};"
              f" mails written {s['stored']}, left in the spool {spooled};"
              f"  rotations: timeouts {timeouts} of 32, tokens kept {kept} for {issued} issued")


# ---------------------------------------------------------------------------------------
# Section: scale
# ---------------------------------------------------------------------------------------

def floods(a, R):
    stored, requests = a.flood
    section(f"Scale: CAPTCHA GET from new clients with {stored:,} stored rate-limit windows "
            f"(the max_windows ceiling: each new client evicts), {requests} per build, builds alternating")
    root = site(captcha_max_get=1000, extra=f"max_windows = {stored}\n")
    base = os.path.join(root, "var/tmp/ratelimit")
    now = int(time.time())
    t0 = time.perf_counter()
    for i in range(stored):
        key = secrets.token_hex(32)
        shard = hashlib.sha256(key.encode()).hexdigest()[:2]
        os.makedirs(os.path.join(base, shard), exist_ok=True)
        with open(os.path.join(base, shard, key + ".toml"), "w") as f:
            f.write(f"window_start = {now}\ncaptcha_get = 1\ncontact_post = 0\n")
    print(f"  ({stored:,} windows written in {time.perf_counter() - t0:.1f} s)")
    times = collections.defaultdict(list)
    for i in range(requests):
        for j, b in enumerate(R.builds):
            dt, out, err, _ = spawn([b("captcha")], cgi_env(root, addr=f"2001:db8:{j:x}{i // 256:02x}:{i % 256:x}::1"))
            times[b.name].append(dt)
            if not out.startswith(b"Status: 200"):
                raise SystemExit(f"unexpected: {out[:100]!r} {err[:300]!r}")
    left = sum(len(fs) for _, _, fs in os.walk(base))
    for b in R.builds:
        xs = times[b.name]
        med = pct(xs, .5)
        ref = R.cgi.get(("captcha", b.name))
        vs = f"; median {med / ref['p50']:.2f}x the per-request table's" if ref else ""
        R.flood[b.name] = dict(p50=med, max=max(xs))
        print(f"  {b.name:<14} median {med * 1000:6.2f} ms  p99 {pct(xs, .99) * 1000:6.2f} ms  slowest "
              f"{max(xs) * 1000:7.2f} ms ({max(xs) / med:.1f}x the median{vs})")
    print(f"  windows stored afterwards: {left:,}")
    shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# Section: FastCGI against CGI through nginx
# ---------------------------------------------------------------------------------------

NGINX = "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else "nginx"
# Each wrk thread walks its own range of client addresses (RFC 2544's benchmark range,
# in a header only: nothing is sent there), so requests are spread over 4,096 clients like
# real visitors, not all on the one key of 127.0.0.1.
WRK_LUA = """
local ids = 0
function setup(thread)
  thread:set("id", ids)
  ids = ids + 1
end
function init(args)
  n = (id or 0) * 2048
end
function request()
  n = (n + 1) % 4096
  local h = {}
  for k, v in pairs(wrk.headers) do h[k] = v end
  h["X-Forwarded-For"] = "198.18." .. math.floor(n / 256) .. "." .. (n % 256)
  return wrk.format(nil, nil, h)
end
"""


def template(text, values):
    for k, v in values.items():
        text = text.replace(f"@{k}@", v)
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise SystemExit(f"placeholders not templated: {left}")
    return text


def wrk(url, conns, seconds, lua, headers=()):
    cmd = ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", lua]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [url], capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))

    def lat(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)] if m else float("nan")
    return dict(rps=rps, p50=lat(50), p99=lat(99), bad=int(bad.group(1)) if bad else 0, total=total,
                sock=sock.group(1) if sock else "")


def nginx_bench(a, R):
    seconds = a.wrk_seconds
    section(f"FastCGI against CGI through one nginx ({nginx_version()}), wrk -t2, {seconds} s per figure, "
            "requests over 4,096 client addresses (X-Forwarded-For from a trusted 127.0.0.1)")
    procs = Procs()
    prefix = tempfile.mkdtemp(prefix="fw-bench-nginx-")
    os.chmod(prefix, 0o755)
    try:
        for d in ["conf", "logs", "temp", "run-cgi", "site"]:
            os.makedirs(os.path.join(prefix, d))
        shutil.copytree(os.path.join(REPO, "deploy/site"), os.path.join(prefix, "site"), dirs_exist_ok=True)
        for f in ["fastcgi_params", "mime.types"]:
            shutil.copy(os.path.join("/etc/nginx", f), os.path.join(prefix, "conf", f))
        logs = os.path.join(prefix, "logs")
        # One fcgiwrap for every build's CGI blocks (SCRIPT_FILENAME picks the executable).
        cgi_sock = os.path.join(prefix, "run-cgi", "fcgiwrap.socket")
        procs.start(["fcgiwrap", "-c", str(a.fcgiwrap), "-s", f"unix:{cgi_sock}"], os.path.join(logs, "fcgiwrap.log"))
        wait_for(lambda: os.path.exists(cgi_sock), "fcgiwrap")
        blocks, targets, responders = [], {}, {}
        cgi_conf = open(os.path.join(REPO, "deploy/nginx/cgi.conf")).read()
        fcgi_conf = open(os.path.join(REPO, "deploy/nginx/fastcgi.conf")).read()
        for i, b in enumerate(R.builds):
            root = site(extra='trusted_proxies = ["127.0.0.1"]\n')
            tok = run([b("tokens"), "rotate", "deploy"], dict(FORMWARDEN_ROOT=root))[0].decode().split("\n")[0]
            bin_dir = os.path.join(prefix, f"bin-{i}")
            sock_dir = os.path.join(prefix, f"run-fcgi-{i}")
            os.makedirs(bin_dir)
            os.makedirs(sock_dir)
            for p in ("captcha", "contact", "tokens"):
                shutil.copy(b(p), os.path.join(bin_dir, p))
            for p in ("captcha", "tokens"):
                sock = os.path.join(sock_dir, f"{p}.sock")
                # spawn-fcgi -n execs the executable: this process is the responder.
                responders[b.name, p] = procs.start(["spawn-fcgi", "-n", "-M", "0600", "-s", sock, "--", os.path.join(bin_dir, p)],
                            os.path.join(logs, f"{p}-{i}.log"), env=dict(PATH=os.environ["PATH"], FORMWARDEN_ROOT=root))
                wait_for(lambda: os.path.exists(sock), f"spawn-fcgi {p}")
            for mode, conf in (("CGI", cgi_conf), ("FastCGI", fcgi_conf)):
                port = free_port()
                blocks.append(template(conf, dict(LISTEN=f"127.0.0.1:{port}", SERVER_NAME="127.0.0.1",
                                                  SITE=os.path.join(prefix, "site"), CGI_DIR=bin_dir, ROOT=root,
                                                  SOCK_DIR=os.path.dirname(cgi_sock) if mode == "CGI" else sock_dir)))
                targets[b.name, mode] = (port, tok)
        with open(os.path.join(prefix, "conf/server.conf"), "w") as f:
            f.write("\n".join(blocks))
        with open(os.path.join(prefix, "conf/nginx.conf"), "w") as f:
            f.write(("user root;\n" if os.geteuid() == 0 else "") + f"""daemon off;
master_process on;
worker_processes 2;
pid {prefix}/nginx.pid;
error_log {logs}/error.log warn;
events {{ worker_connections 512; }}
http {{
    include mime.types;
    default_type application/octet-stream;
    access_log off;
    client_body_temp_path {prefix}/temp/client_body;
    proxy_temp_path {prefix}/temp/proxy;
    fastcgi_temp_path {prefix}/temp/fastcgi;
    uwsgi_temp_path {prefix}/temp/uwsgi;
    scgi_temp_path {prefix}/temp/scgi;
    include server.conf;
}}
""")
        procs.start([NGINX, "-p", prefix + "/", "-c", os.path.join(prefix, "conf/nginx.conf"), "-e",
                     os.path.join(logs, "error.log")], os.path.join(logs, "nginx.out"))

        def up(port):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return True
            except OSError:
                return False
        for port, _ in targets.values():
            wait_for(lambda: up(port), f"nginx on {port}")
        lua = os.path.join(prefix, "clients.lua")
        with open(lua, "w") as f:
            f.write(WRK_LUA)
        endpoints = [("captcha", "CAPTCHA GET (PNG)", "/cgi-bin/captcha", lambda tok: []),
                     ("verify", "token verify", "/cgi-bin/tokens?profile=deploy",
                      lambda tok: [f"Authorization: Bearer {tok}"])]
        # Warm-up: every responder and the page cache once, briefly.
        for (bname, mode), (port, tok) in targets.items():
            for _, _, path, hdr in endpoints:
                wrk(f"http://127.0.0.1:{port}{path}", 4, 1, lua, hdr(tok))
        for key, label, path, hdr in endpoints:
            for conns in a.conns:
                print(f"  {label}, {conns} connections:   [{others()}]")
                for b in R.builds:
                    for mode in ("CGI", "FastCGI"):
                        port, tok = targets[b.name, mode]
                        r = wrk(f"http://127.0.0.1:{port}{path}", conns, seconds, lua, hdr(tok))
                        R.nginx[key, conns, b.name, mode] = r
                    c, f = R.nginx[key, conns, b.name, "CGI"], R.nginx[key, conns, b.name, "FastCGI"]
                    flag = lambda r: (f"  ({r['bad']} of {r['total']} non-2xx)" if r["bad"] else "") + (
                        f"  (socket errors: {r['sock']})" if r["sock"] else "")
                    print(f"    {b.name:<14} CGI {c['rps']:7.0f} req/s (p50 {c['p50']:6.2f} p99 {c['p99']:6.2f} ms){flag(c)}"
                          f"   FastCGI {f['rps']:7.0f} req/s (p50 {f['p50']:6.2f} p99 {f['p99']:6.2f} ms){flag(f)}"
                          f"   FastCGI/CGI {f['rps'] / c['rps']:5.2f}x")
                g = R.builds[0].name
                for b in R.builds[1:]:
                    print(f"    FastCGI {b.name} / {g}: {R.nginx[key, conns, b.name, 'FastCGI']['rps'] / R.nginx[key, conns, g, 'FastCGI']['rps']:5.2f}x"
                          f"   CGI {b.name} / {g}: {R.nginx[key, conns, b.name, 'CGI']['rps'] / R.nginx[key, conns, g, 'CGI']['rps']:5.2f}x")
        print(f"  (fcgiwrap -c {a.fcgiwrap}; one spawn-fcgi responder per executable and build; deploy/nginx/*.conf"
              " templated verbatim; nginx with 2 workers)")
        if a.profile:
            profile(a, R, targets, responders, lua, prefix)
    finally:
        procs.stop()
        shutil.rmtree(prefix, ignore_errors=True)


def profile(a, R, targets, responders, lua, prefix):
    """What a FastCGI responder spends a CAPTCHA GET on (wrk -c8, a few seconds per build):
    system calls per request (strace -c -f attached to the responder; strace slows it, the
    counts stay) and, where perf works, where its samples fall (perf record, no call graphs;
    the static executables are stripped, so their own code shows as addresses)."""
    secs = max(2, a.wrk_seconds // 2)
    print(f"\n  FastCGI responder profile, wrk -c8 for {secs} s per figure:   [{others()}]")
    have_perf = shutil.which("perf") and subprocess.run(["perf", "stat", "-e", "task-clock", "true"],
                                                         capture_output=True).returncode == 0
    hz = os.sysconf("SC_CLK_TCK")

    def ticks(pid):
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])
    for (prog, path, hdr), b in [(e, b) for e in (("captcha", "/cgi-bin/captcha", False),
                                                   ("tokens", "/cgi-bin/tokens?profile=deploy", True))
                                 for b in R.builds]:
        port, tok = targets[b.name, "FastCGI"]
        pid = responders[b.name, prog].pid
        url = f"http://127.0.0.1:{port}{path}"
        headers = [f"Authorization: Bearer {tok}"] if hdr else []
        # The responder's own CPU time per request (user + system), without a tracer.
        t = ticks(pid)
        r = wrk(url, 8, secs, lua, headers)
        cpu = (ticks(pid) - t) / hz / max(1, r["total"]) * 1000
        print(f"    {b.name:<14} {'CAPTCHA GET' if prog == 'captcha' else 'token verify'}: {r['rps']:.0f} req/s,"
              f" responder CPU {cpu:.3f} ms per request (the responder kept {cpu * r['rps'] / 1000:.2f} of the 2 CPUs busy)")
        out = os.path.join(prefix, f"strace-{pid}.txt")
        st = subprocess.Popen(["strace", "-f", "-c", "-q", "-o", out, "-p", str(pid)], stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        r = wrk(url, 8, secs, lua, headers)
        st.send_signal(signal.SIGINT)
        st.wait()
        calls = {}
        for line in open(out):
            f = line.split()
            if len(f) >= 5 and f[0][0].isdigit() and f[-1] not in ("total",):
                try:
                    calls[f[-1]] = int(f[3])
                except ValueError:
                    pass
        n = max(1, r["total"])
        top = sorted(calls.items(), key=lambda kv: -kv[1])[:8]
        print(f"    {b.name:<14} syscalls per request ({n} requests under strace): "
              + ", ".join(f"{k} {v / n:.1f}" for k, v in top) + "; memory: "
              + ", ".join(f"{k} {calls.get(k, 0) / n:.1f}" for k in ("mmap", "munmap", "mprotect", "madvise", "brk")))
        if have_perf:
            data = os.path.join(prefix, f"perf-{pid}.data")
            pr = subprocess.Popen(["perf", "record", "-q", "-F", "999", "-o", data, "-p", str(pid)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.3)
            wrk(url, 8, secs, lua, headers)
            pr.send_signal(signal.SIGINT)
            pr.wait()
            rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "sym",
                                  "--percent-limit", "2"], capture_output=True, text=True).stdout
            rows = re.findall(r"^\s+([\d.]+)%\s+\[([.k])\]\s+(\S+)", rep, re.M)
            print(f"    {'':<14} perf samples: " + ", ".join(
                f"{sym}{' [k]' if k == 'k' else ''} {p}%" for p, k, sym in rows[:10]))


def nginx_version():
    return subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip().split("/")[-1]


# ---------------------------------------------------------------------------------------
# Section: files against Redis
# ---------------------------------------------------------------------------------------

def redis_server(procs):
    """A throw-away redis-server on a free loopback port, without persistence."""
    port = free_port()
    d = tempfile.mkdtemp(prefix="fw-bench-redis-")
    procs.start(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", d], os.path.join(d, "log"))
    for _ in range(500):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1) as c:
                c.sendall(b"PING\r\n")
                if c.recv(16).startswith(b"+PONG"):
                    return port
        except OSError:
            time.sleep(0.01)
    raise SystemExit("redis-server did not start")


def stores(a, R):
    """Files against Redis in one run: the default build on files, the Redis build on files
    (what compiling Redis in costs when it is not used) and the Redis build on a local
    redis-server, interleaved in blocks of 10; then one-key contention on both stores."""
    b_files = R.builds[0]
    b_redis = Build("redis build", a.redis_bindir)
    procs = Procs()
    try:
        port = redis_server(procs)
        store = f'[store]\nbackend = "redis"\nurl = "redis://127.0.0.1:{port}/0"\nprefix = "bench:"\n'
        files_root, redis_root = site(), site(store=store)
        setups = [("default, files", b_files, files_root), ("redis build, files", b_redis, files_root),
                  ("redis build, Redis", b_redis, redis_root)]
        runs = a.store_runs
        section(f"Stores (glibc builds): p50 of {runs} sequential CGI runs each, setups interleaved in blocks of 10,"
                " redis-server on loopback")
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
        trues = []
        print(f"  {'':<32}" + "".join(f"  {n:>22}" for n, _, _ in setups))
        for label, job in cases:
            total = collections.defaultdict(list)
            done = 0
            while done < runs:
                block = min(10, runs - done)
                trues += [spawn(["/bin/true"], {})[0] for _ in range(block)]
                for name, bb, r in setups:
                    jobs = [job(bb, r) for _ in range(block)]
                    for cmd, env, body, want in jobs:
                        dt, out, err, _ = spawn(cmd, env, body)
                        total[name].append(dt)
                        if not out.startswith(want):
                            raise SystemExit(f"{label} ({name}): unexpected answer {out[:120]!r}")
                done += block
            base = pct(trues, .5)
            print(f"  {label:<32}" + "".join(f"  {pct(total[n], .5) * 1000:7.2f} ms {pct(total[n], .5) / base:5.2f}x"
                                             for n, _, _ in setups))
        print(f"  (p50 per request and its multiple of /bin/true, p50 {pct(trues, .5) * 1000:.2f} ms)")

        print("  one client key under contention, CAPTCHA GET, limit 1000 per window:")
        for workers, each in [(8, a.c8[1] // 4), (64, a.c64[1])]:
            for name, st in [("files", ""), ("Redis", store.replace("bench:", f"bench{workers}:"))]:
                r = site(captcha_max_get=1000, store=st)
                env = cgi_env(r, addr="198.51.100.77")

                def job(_):
                    dt, out, err, _ = spawn([b_redis("captcha")], env)
                    k = "ok" if out.startswith(b"Status: 200") else "timeout" if b"Lock-Timeout" in err else "other"
                    return k, dt, [], []
                res, wall = flood(workers, each, job)
                s = summarize(res, wall, 0)
                print(f"    {workers:2} workers x {each:3}  {name:<6} {s['rps']:7.1f} req/s  p50 {s['p50'] * 1000:6.1f} ms"
                      f"  p99 {s['p99'] * 1000:6.1f} ms  ok {s['ok']:4}  lock timeouts {s['timeouts']:3}  other {s['other']}")
    finally:
        procs.stop()


# ---------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------

def targets(a, R):
    rows = []

    def row(what, value, ok):
        rows.append((what, value, "PASS" if ok else "MISS"))

    for b in R.builds:
        c = lambda k: R.cgi.get((k, b.name))
        if c("post_refused"):
            r = c("post_refused")["p50"] / R.floor50[b.linkage]
            row(f"{b.name}: contact POST refused by the CAPTCHA <= 1.0x the {b.linkage} floor probe", f"{r:.2f}x",
                r <= 1.0)
        if c("captcha"):
            r = c("captcha")["p50"] / R.true50
            row(f"{b.name}: CAPTCHA GET (PNG) <= 2x /bin/true", f"{r:.2f}x", r <= 2.0)
        if b.static and R.cgi:
            worst = max((R.cgi[k, b.name]["rss"], k) for k, n in R.cgi if n == b.name)
            row(f"{b.name}: peak RSS of a CGI request <= 2 MiB (largest: {worst[1]})", f"{worst[0] / 1024:.2f} MiB",
                worst[0] <= 2 * 1024)
        k8 = [k for k in R.cont if k[1] and not k[2] and k[3] == b.name and k[0].startswith(f"{a.c8[0]} ")]
        if k8:
            s, f = R.cont[k8[0]]
            row(f"{b.name}: one-key throughput, {a.c8[0]}-way, >= the floor probe's", f"{s['rps'] / f['rps']:.2f}x",
                s["rps"] >= f["rps"])
        k64 = [k for k in R.cont if k[1] and not k[2] and k[3] == b.name and k[0].startswith(f"{a.c64[0]} ")]
        if k64:
            s, _ = R.cont[k64[0]]
            row(f"{b.name}: lock timeouts in the {a.c64[0]} x {a.c64[1]} burst == 0", f"{s['timeouts']}",
                s["timeouts"] == 0)
        for key, label, need in (("captcha", "CAPTCHA GET", 5.0), ("verify", "token verify", 10.0)):
            for conns in a.conns:
                if (key, conns, b.name, "CGI") in R.nginx:
                    r = R.nginx[key, conns, b.name, "FastCGI"]["rps"] / R.nginx[key, conns, b.name, "CGI"]["rps"]
                    row(f"{b.name}: FastCGI/CGI, {label}, {conns} connections >= {need:.0f}x", f"{r:.2f}x", r >= need)
    g = R.builds[0]
    for b in R.builds[1:]:
        if not b.static or g.static:
            continue
        for key, label in (("captcha", "CAPTCHA GET"), ("verify", "token verify")):
            for conns in a.conns:
                if (key, conns, b.name, "FastCGI") in R.nginx:
                    r = R.nginx[key, conns, b.name, "FastCGI"]["rps"] / R.nginx[key, conns, g.name, "FastCGI"]["rps"]
                    row(f"{b.name} responder / {g.name} responder, {label}, {conns} connections >= 1.0x", f"{r:.2f}x",
                        r >= 1.0)
    section("Targets (ratios measured in this run)")
    width = max((len(w) for w, _, _ in rows), default=10)
    for what, value, verdict in rows:
        print(f"  {verdict}  {what:<{width}}  {value}")
    return rows


# ---------------------------------------------------------------------------------------

class Results:
    def __init__(self):
        self.builds, self.floors, self.rss = [], {}, None
        self.cgi, self.cont, self.flood, self.nginx = {}, {}, {}, {}
        self.true50, self.floor50 = None, {}


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")), "0")
    return (f"{os.cpu_count()} CPUs (nproc {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()}), "
            f"{cpu}, {int(mem) // 1024 // 1024} GiB, kernel {platform.release()}, "
            f"{subprocess.run(['sh', '-c', '. /etc/os-release; echo $PRETTY_NAME'], capture_output=True, text=True).stdout.strip()}, "
            f"{subprocess.run(['rustc', '--version'], capture_output=True, text=True).stdout.strip()}, "
            f"Python {platform.python_version()}")


def write_doc(path, command, started, ended, text, rows):
    begin, end = "<!-- bench:begin (written by scripts/bench.sh; edit outside these marks) -->", "<!-- bench:end -->"
    old = open(path).read() if os.path.exists(path) else (
        "# Performance\n\nFigures from one run of `bash scripts/bench.sh` (every comparison is a ratio inside that "
        "run). The part between the marks is rewritten by each full run; notes outside it are kept.\n\n"
        f"{begin}\n{end}\n")
    if begin not in old:
        old += f"\n{begin}\n{end}\n"
    head, rest = old.split(begin, 1)
    tail = rest.split(end, 1)[1] if end in rest else ""
    table = "\n".join(f"| {v} | {w} | {x} |" for w, x, v in rows)
    body = (f"{begin}\n## Last full run\n\n- when: {started} to {ended}\n- command: `{command}`\n"
            f"- machine: {machine()}\n"
            f"- what else was running: printed at the start of every section below ([machine at start: …]: "
            f"load averages, any cargo/rustc/cc processes, and the processes outside the benchmark that used more "
            f"than 5 % of a CPU over a 0.3 s sample; the load averages include the benchmark's own nginx, wrk and "
            f"responders)\n\n"
            f"### Targets\n\n| | target | measured |\n|---|---|---|\n{table}\n\n"
            f"### Output\n\n```text\n{text.rstrip()}\n```\n{end}")
    with open(path, "w") as f:
        f.write(head + body + tail)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bindir")
    ap.add_argument("--static", help="the unpacked static release archive")
    ap.add_argument("--build", action="append", default=[], help="NAME=DIR, another build measured beside")
    ap.add_argument("--floor", default=os.path.join(REPO, "target/bench/floor"))
    ap.add_argument("--floor-static", default=os.path.join(REPO, "target/bench/floor-static"))
    ap.add_argument("--rss", default=os.path.join(REPO, "target/bench/rss"))
    ap.add_argument("--redis-bindir", help="the glibc build with the Redis store (for the store section)")
    ap.add_argument("--only", default="cgi,contention,floods,nginx,store")
    ap.add_argument("--quick", action="store_true", help="a smoke run: every section, small counts")
    ap.add_argument("--runs", type=int)
    ap.add_argument("--profile", action="store_true",
                    help="after the nginx figures: syscalls per request (strace) and perf samples of each responder")
    ap.add_argument("--doc", help="write the figures into this Markdown file (docs/PERFORMANCE.md)")
    a = ap.parse_args()
    q = a.quick
    a.runs = a.runs or (30 if q else 300)
    a.c8 = (8, 25 if q else 200)
    a.c64 = (64, 2 if q else 5)
    a.flood = (5_000, 50) if q else (100_000, 300)
    a.wrk_seconds = 1 if q else 5
    a.conns = (8, 32)
    a.fcgiwrap = 8
    a.store_runs = 20 if q else 100
    only = set(a.only.split(","))
    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    tee = Tee(sys.stdout)
    sys.stdout = tee
    R = Results()
    R.builds.append(Build("glibc", a.bindir))
    if a.static:
        R.builds.append(Build("static musl", a.static))
    for spec in a.build:
        name, d = spec.split("=", 1)
        R.builds.append(Build(name, d))
    R.floors = {"dynamic": a.floor}
    if any(b.static for b in R.builds):
        R.floors["static"] = a.floor_static
    R.rss = a.rss
    for p in list(R.floors.values()) + [R.rss]:
        if not os.access(p, os.X_OK):
            raise SystemExit(f"missing {p} (scripts/bench.sh builds it)")
    print(f"formwarden benchmark{' (--quick)' if q else ''}, {started}\nmachine: {machine()}\n"
          f"builds: " + "; ".join(f"{b.name} = {b.dir} ({b.linkage})" for b in R.builds))
    t0 = time.time()
    failed = []
    for name, fn in [("cgi", per_request), ("contention", contention), ("floods", floods), ("nginx", nginx_bench),
                     ("store", stores)]:
        if name not in only or (name == "store" and not a.redis_bindir):
            continue
        # A section that fails is reported and the run goes on: the other figures and the
        # targets are still printed (and the exit status says that something failed).
        try:
            fn(a, R)
        except (Exception, SystemExit) as e:
            failed.append(name)
            print(f"\n  SECTION {name} FAILED: {e!r}")
    rows = targets(a, R)
    if failed:
        print(f"\nfailed sections: {', '.join(failed)}")
    print(f"\n(whole run {time.time() - t0:.0f} s; machine at the end: {others()})")
    sys.stdout = tee.out
    if a.doc:
        ended = datetime.datetime.now().astimezone().strftime("%H:%M %Z")
        cmd = "bash scripts/bench.sh" + (" --quick" if q else "")
        write_doc(a.doc, cmd, started, ended, tee.buf.getvalue(), rows)
        print(f"wrote {a.doc}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
