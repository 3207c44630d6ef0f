"""User-supplied strings made safe for a terminal: control characters shown as escapes, never obeyed."""

from __future__ import annotations

import re

# C0 and DEL, C1 (ESC-free terminal controls such as CSI U+009B), and the Unicode characters that break or
# reorder a line: line/paragraph separators, bidi embeddings, overrides and isolates ("Trojan Source").
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def printable(value: object) -> str:
    """str(value) with every character that could move the cursor, start a terminal escape sequence, end
    the line or reverse the text direction written as a visible escape (\\x1b, \\n, \\u202e), so that a file
    name or a label can never forge or hide a line of output. Backslashes stay as they are: the output is
    for reading, not for parsing (use --json for that)."""
    return _UNSAFE.sub(_escape, str(value))
