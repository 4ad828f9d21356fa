"""The CAPTCHA alphabet, read from its one definition (`captcha::ALPHABET_TEXT` in
shared/src/captcha.rs), so that the font subset, the audio clips and the OCR measurement
cannot drift from what the service draws."""

import os
import re

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "captcha.rs")


def alphabet() -> str:
    with open(SOURCE, encoding="utf-8") as f:
        found = re.search(r'pub const ALPHABET_TEXT: &str = "([A-Z0-9]+)";', f.read())
    if not found:
        raise SystemExit(f"{SOURCE}: no `pub const ALPHABET_TEXT` line")
    return found.group(1)
