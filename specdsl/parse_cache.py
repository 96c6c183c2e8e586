"""Parsed spec files kept on disk between processes, so that `specc compile` of a file it has seen skips Lark
entirely: importing Lark, loading its tables and parsing cost about half of a warm compile process (issue 13;
bench/compile_speed.py shows the process figures).

- Where: $SPECC_CACHE_DIR, else $XDG_CACHE_HOME/specc, else ~/.cache/specc; `SPECC_CACHE_DIR=off` turns it off.
- Key: SHA-256 of the text, its display name (spans carry it), specc's version and the source of the grammar and
  of the modules that shape the tree (grammar/specc.lark, syntax.py, grammar_parser.py): an edited grammar or
  transformer, even in an editable install, never reads back a tree it did not make.
- Only files that parsed are stored, so errors are always the parser's own.
- Entries are pickles. pickle runs code named in the file, so a folder is used only when this user owns it and
  nobody else can write to it (as ssh treats its keys); it is created with mode 0700, and entries are written to
  a temporary name and renamed, never half-written. An entry that cannot be read for any reason is ignored and
  replaced. Past MAX_ENTRIES the oldest entries (only files named as ours) are removed.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import stat
import tempfile
import time
from functools import lru_cache
from pathlib import Path

from .resources import grammar_path
from .version import __version__

MAX_ENTRIES = 512  # a few KB to a few tens of KB each
SUFFIX = ".syntax.pickle"


@lru_cache(maxsize=1)
def _folder() -> Path | None:
    """The cache folder, created if need be, or None when it is off or not safe to read from."""
    setting = os.environ.get("SPECC_CACHE_DIR")
    if setting is not None and setting.strip().lower() in ("", "off", "0", "false", "no"):
        return None
    if setting:
        folder = Path(setting)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = Path(base) / "specc"
    folder = folder / "syntax"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.stat()
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return None
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return None
    return folder


@lru_cache(maxsize=1)
def _code_digest() -> bytes:
    here = Path(__file__).parent
    h = hashlib.sha256(__version__.encode())
    for path in (Path(grammar_path()), here / "syntax.py", here / "grammar_parser.py"):
        try:
            h.update(path.read_bytes())
        except OSError:  # not where an editable install has it: no cache rather than a stale one
            h.update(os.urandom(16))
    return h.digest()


def _entry(text: str, file: str) -> Path | None:
    folder = _folder()
    if folder is None:
        return None
    h = hashlib.sha256(_code_digest())
    h.update(file.encode("utf-8", "surrogatepass") + b"\0" + text.encode("utf-8", "surrogatepass"))
    return folder / (h.hexdigest() + SUFFIX)


def load(text: str, file: str):
    """The SpecFile parsed from exactly this text and name before, or None."""
    path = _entry(text, file)
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            spec = pickle.load(f)
    except Exception:  # absent (the common case), damaged, or from an incompatible Python: parse again
        return None
    from . import syntax as S
    if not isinstance(spec, S.SpecFile) or spec.source != text or spec.path != file:
        return None
    return spec


def store(text: str, file: str, spec) -> None:
    """Keep `spec` for the next process; silently nothing when the folder is off, read-only or full."""
    path = _entry(text, file)
    if path is None:
        return
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=SUFFIX)
        with os.fdopen(fd, "wb") as f:
            pickle.dump(spec, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
        tmp = None
        _prune(path.parent)
    except Exception:  # a full disk, a read-only folder, a tree pickle refuses: the cache is only an optimisation
        pass
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _prune(folder: Path) -> None:
    """Past MAX_ENTRIES, the older half of the entries go, and temporary files a killed process left (an hour old);
    only files named as this module names them."""
    entries, left = [], []
    for p in folder.iterdir():
        if p.name.endswith(SUFFIX):
            (left if p.name.startswith(".tmp-") else entries).append(p)
    for p in left:
        try:
            if time.time() - p.stat().st_mtime > 3600:
                p.unlink()
        except OSError:
            pass
    if len(entries) <= MAX_ENTRIES:
        return
    entries.sort(key=lambda p: p.stat().st_mtime)
    for p in entries[: len(entries) - MAX_ENTRIES // 2]:
        try:
            p.unlink()
        except OSError:
            pass
