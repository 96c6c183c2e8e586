"""The docs say what the code does: the standard library's blocks are documented with the parameters they take.
(The kinds' table is generated from their declarations: tests/test_kinds.py.)"""

import re

from conftest import ROOT, SPECS

LANGUAGE = (ROOT / "docs" / "language.md").read_text(encoding="utf-8")


def library_blocks() -> dict[str, str]:
    """Block name -> its parameter list, whitespace as one space, from every file of specs/std."""
    blocks = {}
    for path in sorted((SPECS / "std").glob("*.spec")):
        for name, params in re.findall(r"^block (\w+)\((.*?)\)\s*\{", path.read_text(encoding="utf-8"), re.M | re.S):
            blocks[name] = " ".join(params.split())
    return blocks


def test_every_library_block_is_documented_with_its_parameters():
    blocks = library_blocks()
    assert len(blocks) >= 6
    rows = {m.group(1): line for line in LANGUAGE.splitlines() if (m := re.match(r"\| `(\w+)`", line))}
    missing = {name: params for name, params in blocks.items() if f" | `{params}` | " not in rows.get(name, "")}
    assert not missing, "docs/language.md's table of library blocks differs from specs/std"
