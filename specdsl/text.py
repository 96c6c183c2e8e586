"""Text from a spec or a file, made safe for a terminal. Torch-free.

A string in a spec, a path or an ONNX file's metadata may hold escape sequences that clear the screen, retitle the
window or hide text (bidirectional overrides). `printable` shows such characters instead of obeying them, one
character for one, so a caret under a source line stays under its culprit.
"""

from __future__ import annotations

import functools
import re

# C0 controls and DEL become their control pictures (U+2400 + code, DEL U+2421): still readable as what they are.
_PICTURES = {c: chr(0x2400 + c) for c in range(0x20)} | {0x7F: "\u2421"}
# C1 controls and the bidirectional embeddings, overrides and isolates have no picture: a replacement character.
_INVISIBLE = re.compile("[\u0080-\u009f\u202a-\u202e\u2066-\u2069]")


def printable(text: str, keep: str = "\t") -> str:
    """`text` with every control character except those in `keep` shown, never obeyed; same length."""
    return _INVISIBLE.sub("\ufffd", str(text).translate(_table(keep)))


@functools.lru_cache(maxsize=None)
def _table(keep: str) -> dict[int, str]:
    return {c: p for c, p in _PICTURES.items() if chr(c) not in keep}
