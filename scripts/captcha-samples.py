"""Writes sample CAPTCHA images, for docs/captcha-samples/ and for a reading test.

Renders N images through the real `captcha` executable of a test build (its answer header
gives the truth, as in scripts/ocr.py) into DIR as sample-01.png ... and writes their
answers to DIR/answers.txt, so that a reader who has not seen that file can be scored.

Usage: python3 scripts/captcha-samples.py CAPTCHA_EXE DIR [N]   (N defaults to 20)
"""
import os
import sys

import ocr


def main():
    if len(sys.argv) not in (3, 4):
        raise SystemExit(__doc__)
    exe, out = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) == 4 else 20
    os.makedirs(out, exist_ok=True)
    root = ocr.site()
    with open(os.path.join(out, "answers.txt"), "w") as f:
        for i in range(1, n + 1):
            name = f"sample-{i:02}.png"
            f.write(f"{name} {ocr.render(exe, root, os.path.join(out, name))}\n")


if __name__ == "__main__":
    main()
