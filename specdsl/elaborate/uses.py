"""`use`: find, read and parse the files a spec uses (the spec's folder, then the library specs/; or a run's saved
copies), and collect the blocks they define."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .. import syntax as S
from ..errors import SpecError
from ..io import file_kind
from ..kinds import KINDS
from ..parse import parse_text, read_source
from ..resources import specs_root
from .state import ElaborationState


@dataclass(frozen=True)
class SavedSources:
    """A spec's files as a run saved them: texts by name, and which file each `use` resolved to."""

    files: dict[str, str]
    links: dict[tuple[str, str], str]


class Uses(ElaborationState):
    def load_uses(self, spec: S.SpecFile, visiting: tuple[str, ...] = ()) -> None:
        """Read every file `spec` uses, and those they use, once each; `visiting` breaks cycles of uses."""
        for block in spec.blocks:
            self._add_block(block)
        for use in spec.uses:
            path = self._resolve_saved(use, spec.path) if self.saved else self._resolve_use(use, spec.path)
            if path is None:
                continue
            key = path if self.saved else os.path.realpath(path)
            if key in visiting:
                continue
            if key in self.loaded:
                self.uses.append((spec.path, use.path, self.loaded[key]))
                continue
            try:
                name, text = (path, self.saved.files[path]) if self.saved else read_source(path)
                used = parse_text(text, name)
            except SpecError as e:
                e.add_note(f"in the file used at {use.span}")
                self.record(e)
                continue
            self.loaded[key] = name
            self.sources[name] = text
            self.uses.append((spec.path, use.path, name))
            self.load_uses(used, visiting + (key,))

    def _resolve_saved(self, use: S.Use, from_file: str) -> str | None:
        """A `use` of a run's saved sources: the file it meant when the run was trained, never the filesystem."""
        name = self.saved.links.get((from_file, use.path))
        if name is None or name not in self.saved.files:
            self.record(SpecError(f"'{use.path}' is not among the sources saved with this run", use.span))
            return None
        return name

    def _add_block(self, block: S.BlockDef) -> None:
        if block.name in KINDS:
            self.record(SpecError(f"block '{block.name}' has the name of a built-in layer", block.span,
                                  hint="choose another name"))
            return
        prior = self.blocks.get(block.name)
        if prior is not None and prior is not block:
            if prior.span != block.span:
                self.record(SpecError(f"block '{block.name}' is defined twice (first at {prior.span})", block.span))
            return
        self.blocks[block.name] = block

    def _resolve_use(self, use: S.Use, from_file: str) -> str | None:
        if not use.path.endswith(".spec"):  # nor will a parse error quote the first line of /etc/passwd
            self.record(SpecError(f"cannot use '{use.path}': not a .spec file", use.span,
                                  hint='use takes a .spec file, e.g. use "std/transformer.spec"'))
            return None
        here = Path(from_file).parent if from_file and not from_file.startswith("<") else Path(".")
        for base in (here, specs_root()):
            candidate = base / use.path
            try:
                mode = os.stat(candidate).st_mode
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as e:  # a name too long for the file system, a loop of links...
                self.record(SpecError(f"cannot read '{use.path}' to use: {e.strerror or e}", use.span))
                return None
            if not stat.S_ISREG(mode):  # read_source's check, reported at the use
                self.record(SpecError(f"'{use.path}' is not a regular file ({file_kind(mode)})", use.span,
                                      hint="a spec is a text file"))
                return None
            return str(candidate)
        self.record(SpecError(f"cannot find '{use.path}' to use", use.span,
                              hint=f"paths are relative to the spec's folder, then to the library {specs_root()}"))
        return None
