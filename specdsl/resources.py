"""Where the grammar and the spec library live, in a source checkout and in an installed wheel.

The wheel carries `grammar/specc.lark` as `specdsl/_data/grammar/specc.lark` and `specs/` as `specdsl/_data/specs/`
(see pyproject.toml); a checkout (or an editable install) reads them from the repository root.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _first_existing(*candidates: Path) -> Path:
    for c in candidates:
        if c.exists():
            return c
    return candidates[0]


@lru_cache(maxsize=1)
def grammar_path() -> Path:
    return _first_existing(_PACKAGE / "_data" / "grammar" / "specc.lark", _PACKAGE.parent / "grammar" / "specc.lark")


@lru_cache(maxsize=1)
def specs_root() -> Path:
    """The folder of the zoo and of its standard library (`std/`), searched by `use` after the using file's folder."""
    return _first_existing(_PACKAGE / "_data" / "specs", _PACKAGE.parent / "specs")
