"""How often plain OCR reads formwarden's CAPTCHA images (issue 8, item 6).

Renders N images through the real `captcha` executable of a test build (its answer header
gives the truth), then asks tesseract to read each one the way a cheap bot would: page
segmentation modes 7 (one line), 8 (one word) and 13 (raw line), the character whitelist
set to the product's alphabet, on the image as served and on a cleaned copy (3x3 median,
then a fixed threshold), which removes thin lines and speckles. An image counts as read
when any of these attempts gives the exact answer: a bot may try them all.

Usage: python3 scripts/ocr.py CAPTCHA_EXE[=ALPHABET] [...] [--images N] [--jobs J]
The whitelist is the alphabet of shared/src/captcha.rs unless an executable is followed by
its own (an older build drew from a larger alphabet: OCR gets each build's own, as a bot
that knows the site would).
Several executables (say an older build and the new one) are measured in one run, their
images interleaved, so that both see the same machine. Figures only; nothing is asserted.
"""
import argparse, concurrent.futures, os, re, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shared", "assets"))
from alphabet import alphabet  # noqa: E402

ALPHABET = alphabet()
SALT = "ocrS4lt-0123456789abcdefghijklmnopqrstuvwxyz"


def site():
    d = tempfile.mkdtemp(prefix="fw-ocr-")
    os.makedirs(d + "/var/config")
    with open(d + "/var/config/config.toml", "w") as f:
        f.write(f'ip_salt = "{SALT}"\ncaptcha_max_get = 1000000\nmax_challenges = 1000000\n'
                '[mail]\nfrom = "B <b@example.org>"\nto = ["o@example.org"]\ntransport = "file"\n')
    return d


def render(exe, root, out):
    env = dict(GATEWAY_INTERFACE="CGI/1.1", REQUEST_METHOD="GET", REMOTE_ADDR="192.0.2.1",
               FORMWARDEN_ROOT=root, SCRIPT_NAME="/cgi-bin/captcha", QUERY_STRING="")
    raw = subprocess.run([exe], env=env, capture_output=True, check=True).stdout
    head, body = raw.split(b"\r\n\r\n", 1)
    answer = re.search(rb"X-Formwarden-Test-Answer: (\w+)", head).group(1).decode()
    with open(out, "wb") as f:
        f.write(body)
    return answer


def clean(src, dst):
    """3x3 median filter, then a threshold at the midpoint between paper and ink, with the
    image crate's decoder-free path: PGM through `convert` would need ImageMagick, so this
    decodes the PNG with Python's zlib (8-bit grayscale, no interlace: what we serve)."""
    import struct, zlib
    data = open(src, "rb").read()
    pos, w, h, idat = 8, 0, 0, b""
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h = struct.unpack(">II", chunk[:8])
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + n
    raw = zlib.decompress(idat)
    rows, prev = [], [0] * w
    for y in range(h):
        f, line = raw[y * (w + 1)], list(raw[y * (w + 1) + 1:(y + 1) * (w + 1)])
        for x in range(w):
            a = line[x - 1] if x else 0
            b, c = prev[x], prev[x - 1] if x else 0
            if f == 1: line[x] = (line[x] + a) & 255
            elif f == 2: line[x] = (line[x] + b) & 255
            elif f == 3: line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prev = line
    out = bytearray()
    for y in range(h):
        for x in range(w):
            win = sorted(rows[yy][xx] for yy in range(max(0, y - 1), min(h, y + 2))
                         for xx in range(max(0, x - 1), min(w, x + 2)))
            out.append(0 if win[len(win) // 2] < 128 else 255)
    with open(dst, "wb") as f:
        f.write(b"P5\n%d %d\n255\n" % (w, h) + bytes(out))


def read(path, alphabet):
    got = set()
    for psm in (7, 8, 13):
        p = subprocess.run(["tesseract", path, "-", "--psm", str(psm), "-c",
                            f"tessedit_char_whitelist={alphabet}"], capture_output=True)
        got.add(re.sub(r"\s", "", p.stdout.decode(errors="replace")).upper())
    return got


def attempt(job):
    label, png, answer = job
    alphabet = label[1]
    pgm = png[:-4] + ".pgm"
    clean(png, pgm)
    plain = answer in read(png, alphabet)
    cleaned = answer in read(pgm, alphabet)
    return label, png, answer, plain, cleaned


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("exes", nargs="+")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="fw-ocr-img-")
    labels = [tuple(e.split("=", 1)) if "=" in e else (e, ALPHABET) for e in a.exes]
    roots = {label: site() for label in labels}
    jobs = []
    for i in range(a.images):
        for n, label in enumerate(labels):
            png = os.path.join(work, f"{n}-{i}.png")
            jobs.append((label, png, render(label[0], roots[label], png)))
    print(f"tesseract {subprocess.run(['tesseract', '--version'], capture_output=True, text=True).stdout.split()[1]}, "
          f"{a.images} images per executable, psm 7/8/13, {a.jobs} jobs")
    t = time.time()
    score = {label: [0, 0, 0] for label in labels}
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
        for label, png, answer, plain, cleaned in pool.map(attempt, jobs):
            if plain or cleaned:
                print(f"  read: {png} {answer}", flush=True)
            s = score[label]
            s[0] += plain
            s[1] += cleaned
            s[2] += plain or cleaned
    for label in labels:
        p, c, e = score[label]
        print(f"  {label[0]} (whitelist {label[1]})\n    read as served {p:4}  after cleaning {c:4}  either {e:4} of {a.images}"
              f"  ({100 * e / a.images:.1f} %)")
    print(f"  ({time.time() - t:.0f} s; images in {work})")


if __name__ == "__main__":
    main()
