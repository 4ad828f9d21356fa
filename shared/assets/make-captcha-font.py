#!/usr/bin/env python3
"""Rebuild shared/assets/captcha-font.ttf and captcha-font.LICENSE.

The CAPTCHA renderer (shared/src/captcha_image.rs) embeds a tiny font that only
has to draw the CAPTCHA alphabet, so this script cuts DejaVu Sans Bold down to
those characters, drops everything the renderer never reads (hinting,
OpenType layout and kerning tables), and renames the result.  The renaming is
required: the Bitstream Vera licence only allows modified fonts to be
distributed under names without "Bitstream" or "Vera", the Arev licence the
same for "Arev" and "Tavmjong Bah", and the DejaVu project asks for the same
courtesy for "DejaVu".

Usage (Debian/Ubuntu):

    apt-get install -y fonts-dejavu-core      # tested with 2.37-6
    pip install fonttools                     # tested with 4.68.0
    python3 shared/assets/make-captcha-font.py

The output is byte-for-byte reproducible for the same input font and
fontTools version, because the head table timestamps are pinned.
"""

import argparse
import hashlib
import os
import sys
import textwrap

from fontTools import subset
from fontTools.ttLib import TTFont

from alphabet import alphabet

ALPHABET = alphabet()

SOURCE = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
HERE = os.path.dirname(os.path.abspath(__file__))

FAMILY = "Formwarden Captcha Sans"
STYLE = "Bold"
POSTSCRIPT = "FormwardenCaptchaSans-Bold"

# 2024-01-01T00:00:00Z in seconds since 1904-01-01, the epoch the head table
# uses; a fixed value keeps rebuilt fonts identical.
PINNED_TIMESTAMP = 3786825600

FORBIDDEN_IN_NAMES = ("dejavu", "bitstream", "vera", "arev", "tavmjong")


def build(source: str, out_font: str, out_license: str) -> None:
    font = TTFont(source, recalcTimestamp=False)
    name = font["name"]

    # The original licence text travels with the subset in its own file,
    # together with a note saying how the font was changed.
    licence = name.getDebugName(13)
    copyright_notice = name.getDebugName(0)
    version = name.getDebugName(5)
    if not licence or not copyright_notice or not version:
        sys.exit(f"{source}: missing copyright, licence or version name record")

    options = subset.Options()
    options.layout_features = []  # The renderer places every glyph itself.
    options.hinting = False  # ab_glyph ignores TrueType hinting.
    options.name_IDs = [0]  # Only the copyright survives; the rest is rewritten below.
    options.name_legacy = False  # Windows (platform 3) records only.
    options.name_languages = [0x0409]
    options.notdef_outline = False
    options.glyph_names = False
    options.drop_tables += ["FFTM", "gasp", "kern", "GDEF", "GPOS", "GSUB"]
    subsetter = subset.Subsetter(options)
    subsetter.populate(text=ALPHABET)
    subsetter.subset(font)

    renamed = {
        1: FAMILY,
        2: STYLE,
        3: f"{POSTSCRIPT}; {version}; formwarden CAPTCHA subset",
        4: f"{FAMILY} {STYLE}",
        5: f"{version}; formwarden CAPTCHA subset",
        6: POSTSCRIPT,
        7: "Bitstream Vera is a trademark of Bitstream, Inc.",
        # The full original licence stays inside the font as well, so that a
        # formwarden binary, which embeds this file, carries the permission
        # notice even when the LICENSE file is not shipped next to it.
        13: (
            "Subset of DejaVu Sans Bold, renamed as its licence requires; see "
            "captcha-font.LICENSE for what was changed.\n\n" + licence
        ),
        14: "https://dejavu-fonts.github.io/License.html",
    }
    for name_id, value in renamed.items():
        name.setName(value, name_id, 3, 1, 0x0409)

    for record in name.names:
        if record.nameID == 0:
            continue
        text = record.toUnicode().lower()
        for word in FORBIDDEN_IN_NAMES:
            if word in text and record.nameID not in (7, 13, 14):
                sys.exit(f"name record {record.nameID} still mentions {word!r}")

    font["head"].created = PINNED_TIMESTAMP
    font["head"].modified = PINNED_TIMESTAMP
    font.save(out_font)

    with open(source, "rb") as f:
        source_sha = hashlib.sha256(f.read()).hexdigest()
    with open(out_font, "rb") as f:
        out_bytes = f.read()

    paragraphs = [
        f'captcha-font.ttf: "{FAMILY} {STYLE}"',
        f"This font is a modified version of DejaVu Sans Bold ({version}), as "
        f"shipped by Debian's fonts-dejavu-core package (source file "
        f"DejaVuSans-Bold.ttf, sha256 {source_sha}).",
        f"What was changed: the font was cut down to the {len(ALPHABET)} "
        f'characters "{ALPHABET}" used by formwarden\'s CAPTCHA images; '
        f"TrueType hinting, the OpenType layout tables (GDEF, GPOS, GSUB) and "
        f"the kern, gasp and FFTM tables were removed; the name records were "
        f"rewritten (the original licence text is kept in the licence record); "
        f'and the font was renamed to "{FAMILY}" (PostScript name '
        f'"{POSTSCRIPT}") so that its names no longer contain "DejaVu", '
        f'"Bitstream", "Vera" or "Arev", as the licences below require. The '
        f"glyph outlines themselves are unchanged. It was produced with "
        f"fontTools by shared/assets/make-captcha-font.py in this repository.",
        "The copyright notice and licence of the original font follow, unchanged.",
        "Copyright notice (from the original font):",
        None,  # The copyright notice goes here verbatim, not re-wrapped.
        "Licence (from the original font):",
    ]
    header = "\n\n".join(
        copyright_notice.strip() if p is None else textwrap.fill(p, 78, break_long_words=False)
        for p in paragraphs
    )
    with open(out_license, "w", encoding="utf-8", newline="\n") as f:
        f.write(header)
        f.write("\n\n")
        f.write(licence.strip().replace("\r\n", "\n"))
        f.write("\n")

    print(f"{out_font}: {len(out_bytes)} bytes, sha256 {hashlib.sha256(out_bytes).hexdigest()}")
    print(f"{out_license}: written")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=SOURCE, help="path to DejaVuSans-Bold.ttf")
    parser.add_argument("--out-dir", default=HERE, help="where to write the font and licence")
    args = parser.parse_args()
    build(
        args.source,
        os.path.join(args.out_dir, "captcha-font.ttf"),
        os.path.join(args.out_dir, "captcha-font.LICENSE"),
    )


if __name__ == "__main__":
    main()
