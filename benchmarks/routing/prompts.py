"""Prompts at the router's body limit: ordinary prose, and texts built to make regular expressions
backtrack. The routing benchmark times the policy's decision on them; the hostile-prompt benchmark
sends them through the running stack's edges."""

from __future__ import annotations

import json

from serving.server import COMPONENT_MAX_BODY_BYTES

# Room for the rest of the request body around the prompt.
BODY_MARGIN_BYTES = 1024


def pathological_prompts(limit: int = COMPONENT_MAX_BODY_BYTES - BODY_MARGIN_BYTES) -> dict[str, str]:
    """Prompts near the body limit built to make patterns backtrack (each took the rule policy's old
    patterns quadratic time): an unclosed LaTeX `$` before many `^` (the 120 KB prompt that froze
    the router for 15 s), a megabyte of blank lines, list markers without items, a run of spaces
    after each `;`. Each fits in `limit` bytes once written as a JSON string (a newline takes two)."""
    return {"unclosed LaTeX, 120 KB": "$" + "a^" * 60_000,
            "unclosed LaTeX, 1 MB": _fill("$", "a^", limit),
            "blank lines, 1 MB": _fill("", "\n", limit) + "x",
            "list markers without items, 1 MB": _fill("", "1.\n\n", limit),
            "spaces after semicolons, 1 MB": _fill("", ";" + " " * 1000 + "x", limit)}


def _fill(head: str, unit: str, limit: int) -> str:
    """`head` and as many `unit`s as fit in `limit` bytes of JSON."""
    room = limit - len(json.dumps(head)) - 1
    return head + unit * (room // len(json.dumps(unit)[1:-1]))


def body_limit_text() -> str:
    """Ordinary prose (Python's documentation) filling the router's default body limit."""
    from pydoc_data.topics import topics

    text = "\n".join(topics[key] for key in sorted(topics))
    while len(text) < COMPONENT_MAX_BODY_BYTES:
        text += text
    return text[: COMPONENT_MAX_BODY_BYTES - BODY_MARGIN_BYTES]
