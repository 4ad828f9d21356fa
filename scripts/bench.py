"""formwarden benchmark: per-request time of each executable (sequential runs, so the
figure is start-up plus work) against /bin/true, peak memory, and lock contention in
64-process bursts on one key (how many timed out, how long the slowest waited).

Usage: python3 scripts/bench.py BIN_DIR [--runs N] [--bursts N]
"""
import argparse, collections, os, re, resource, subprocess, tempfile, time, urllib.parse

SALT = "b3nchS4lt-0123456789abcdefghijklmnopqrstuvwxyz"


def site(captcha_max_get=1000000):
    d = tempfile.mkdtemp(prefix="fw-bench-")
    os.makedirs(d + "/var/config")
    with open(d + "/var/config/config.toml", "w") as f:
        f.write(f'ip_salt = "{SALT}"\ncaptcha_max_get = {captcha_max_get}\ncontact_max_post = 1000000\n'
                f'[mail]\nfrom = "B <b@example.org>"\nto = ["o@example.org"]\ntransport = "file"\n[mail.file]\ndir = "{d}/mail-out"\n'
                '[tokens.profiles.admin]\n[tokens.profiles.deploy]\nmax_tokens = 10000\n')
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
    a = ap.parse_args()
    b = lambda name: os.path.join(a.bindir, name)
    root = site()

    first, err = run([b("captcha")], cgi_env(root))
    if not first.startswith(b"Status: 200"):
        raise SystemExit(f"captcha does not answer 200; fix the set-up first: {err.decode()}")
    print(f"per-request time, {a.runs} sequential runs each (one process per request, as CGI):")
    base = timed("/bin/true", a.runs, lambda: run(["/bin/true"], {}))
    timed("captcha GET (PNG + challenge)", a.runs, lambda: run([b("captcha")], cgi_env(root)), base)
    timed("contact GET (form page)", a.runs, lambda: run([b("contact")], cgi_env(root)), base)
    posts = []
    for _ in range(a.runs):
        c, ans = answer_of(run([b("captcha")], cgi_env(root))[0])
        body = urllib.parse.urlencode(dict(name="Bench", email="b@example.net", subject="s", message="m", captcha=ans)).encode()
        posts.append((cgi_env(root, "POST", CONTENT_TYPE="application/x-www-form-urlencoded", CONTENT_LENGTH=str(len(body)), HTTP_COOKIE=f"fw_captcha={c}"), body))
    it = iter(posts)
    def post():
        env, body = next(it)
        out, _ = run([b("contact")], env, body)
        assert out.startswith(b"Status: 200"), out[:200]
    timed("contact POST (verify+spool+file mail)", a.runs, post, base)
    tok = run([b("tokens"), "rotate", "deploy"], dict(FORMWARDEN_ROOT=root))[0].decode().split("\n")[0]
    timed("tokens verify GET (lock-free)", a.runs, lambda: run([b("tokens")], cgi_env(root, QUERY_STRING="profile=deploy", HTTP_AUTHORIZATION=f"Bearer {tok}")), base)
    timed("tokens rotate (CLI, durable write)", a.runs, lambda: run([b("tokens"), "rotate", "deploy"], dict(FORMWARDEN_ROOT=root)), base)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(f"  peak resident memory of any child: {peak / 1024:.1f} MiB")

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


if __name__ == "__main__":
    main()
