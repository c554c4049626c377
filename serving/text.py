"""Text as clients send it: JSON can carry half a surrogate pair ("\\ud800") into a Python str,
which then has no UTF-8 form. What has to be encoded (hashed, or written back in a message that
quotes the client) gets U+FFFD in its place, as a UTF-8 decoder would show it."""

from __future__ import annotations

import re

LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # a str holds a valid pair as one code point


def without_lone_surrogates(text: str) -> str:
    """`text` itself when it has a UTF-8 form (which costs one encoding to tell, none for ASCII)."""
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return LONE_SURROGATE.sub("\ufffd", text)
    return text
