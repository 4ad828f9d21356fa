#!/usr/bin/env python3
"""Rebuild shared/assets/captcha-audio-en.bin and captcha-audio-de.bin.

The audio CAPTCHA (shared/src/captcha_audio.rs) speaks the characters of a challenge from
clips embedded in the executable, so that nothing is synthesized on the server and no
speech engine is needed on a shared host. This script makes those clips with espeak-ng:
each character of the CAPTCHA alphabet spoken on its own (espeak-ng says a single letter
by its name: "ay", "vee" in English; "ah", "fau" in German), leading and trailing silence
cut, resampled to 8 kHz and stored as unsigned 8-bit samples, peak-normalized.

File format (little-endian): for each character of the alphabet, in its order, a u32
sample count followed by that many u8 samples. The renderer checks the count of clips.

Usage (Debian/Ubuntu):

    apt-get install -y espeak-ng              # tested with 1.51
    python3 shared/assets/make-captcha-audio.py

The output is byte-for-byte reproducible for the same espeak-ng version and voice data.
Licence (see captcha-audio.LICENSE): espeak-ng is GPL-3.0-or-later; these files are the program's output (speech it
synthesized), which its licence does not cover, and no espeak-ng code or voice data is
shipped. The project's own licence applies to them.
"""

import argparse
import os
import struct
import subprocess
import tempfile
import wave

from alphabet import alphabet

ALPHABET = alphabet()
RATE = 8000
# espeak-ng voice, words per minute: a little slower than its default of 175, since each
# clip is one letter name that the listener must catch through noise.
VOICES = {"en": ("en-us", 140), "de": ("de", 140)}
HERE = os.path.dirname(os.path.abspath(__file__))


def speak(voice, speed, text, path):
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-w", path, text],
        check=True,
    )
    with wave.open(path) as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2, "espeak-ng writes 16-bit mono"
        rate = w.getframerate()
        frames = w.readframes(w.getnframes())
    return rate, list(struct.unpack("<%dh" % (len(frames) // 2), frames))


def trim(samples, threshold=300):
    loud = [i for i, s in enumerate(samples) if abs(s) > threshold]
    if not loud:
        raise SystemExit("espeak-ng produced silence")
    return samples[max(0, loud[0] - 80): loud[-1] + 80]


def resample(samples, src, dst):
    """Box filter over each output sample's span of input (espeak's output has little above
    4 kHz, so this is enough against aliasing), then linear positions."""
    step = src / dst
    out = []
    n = int(len(samples) / step)
    for i in range(n):
        a = int(i * step)
        b = max(a + 1, int((i + 1) * step))
        chunk = samples[a:b]
        out.append(sum(chunk) / len(chunk))
    return out


def to_u8(samples):
    peak = max(abs(s) for s in samples) or 1
    return bytes(max(0, min(255, round(128 + s / peak * 115))) for s in samples)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=HERE, help="folder for the .bin files")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for lang, (voice, speed) in VOICES.items():
            pack = bytearray()
            for ch in ALPHABET:
                rate, samples = speak(voice, speed, ch, os.path.join(tmp, "c.wav"))
                clip = to_u8(resample(trim(samples), rate, RATE))
                pack += struct.pack("<I", len(clip)) + clip
            path = os.path.join(args.out, f"captcha-audio-{lang}.bin")
            with open(path, "wb") as f:
                f.write(pack)
            print(f"{path}: {len(ALPHABET)} clips, {len(pack)} bytes")


if __name__ == "__main__":
    main()
