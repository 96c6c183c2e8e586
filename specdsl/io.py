"""Files written whole or not at all: a temporary file in the same folder, fsync, then an atomic rename.

Files we write for users (`--emit-torch`, `specc export -o`) are checked with `check_output` before any work:
replacing a regular file is what the user asked for; a link, folder, FIFO or device at the path, or a missing
folder, is an error, never something we replace or create.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Iterator

from .errors import Span, SpecError


def file_kind(mode: int) -> str:
    """What an entry is, in words, from its st_mode."""
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a file"


def open_regular(path: str | os.PathLike, where: Span, follow_links: bool = True, hint: str | None = None):
    """Open an existing regular file for reading (binary), refusing anything else: a device such as /dev/zero reads
    forever (and says its size is 0), a named pipe waits for a writer, a folder holds no text. Opened without
    blocking, then checked on the open file, so nothing can be swapped in between. Every failure is a SpecError at
    `where`; `follow_links=False` refuses a symbolic link too."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | (0 if follow_links else getattr(os, "O_NOFOLLOW", 0))
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise SpecError(f"no such file: '{path}'", where, hint=hint) from None
    except PermissionError:
        raise SpecError(f"permission denied: '{path}'", where) from None
    except OSError as e:
        if e.errno == errno.ELOOP and not follow_links:
            raise SpecError(f"'{path}' is a symbolic link, not a regular file", where, hint=hint) from None
        raise SpecError(f"cannot read '{path}': {e.strerror or e}", where) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise SpecError(f"'{path}' is not a regular file ({file_kind(mode)})", where, hint=hint)
    return os.fdopen(fd, "rb")


def check_output(path: str | os.PathLike) -> None:
    """Raise a SpecError at `path` unless a file may be written there: it is missing or a regular file, and its
    folder exists and takes new files (probed with a temporary file, as the write will need one)."""
    path = os.fspath(path)
    where = Span(path, 0, 0)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as e:  # e.g. a component of the path is a file
        raise SpecError(f"cannot write '{path}': {e.strerror}", where) from None
    if mode is not None and not stat.S_ISREG(mode):
        raise SpecError(f"cannot write '{path}': it is {file_kind(mode)}, not a file", where,
                        hint="choose another path, or remove what is there")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        shown = os.path.dirname(path) or folder
        if os.path.lexists(folder):
            raise SpecError(f"cannot write '{path}': '{shown}' is not a folder", where)
        raise SpecError(f"cannot write '{path}': the folder '{shown}' does not exist", where,
                        hint="create it first: specc creates no folders for a file")
    try:
        temp_beside(path).unlink()
    except OSError as e:
        raise SpecError(f"cannot write '{path}': {e.strerror}", where) from None


def output_mode(path: str | os.PathLike) -> int:
    """The permissions a file written at `path` gets: those of the regular file it replaces, else what open()
    would give a new file (0o666 less the umask), not mkstemp's 0o600."""
    try:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode)
    except OSError:
        pass
    return 0o666 & ~_umask()


def _umask() -> int:
    try:  # read, not set: os.umask can only be read by changing it, which races with other threads
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_beside(path: str | os.PathLike) -> Path:
    """A new empty file in the folder of `path`, named after it, for a write to rename onto `path`: a name
    of our own (mkstemp), so nothing of the user's is overwritten."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-",
                               suffix=os.path.basename(path)[-64:])
    os.close(fd)
    return Path(tmp)


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename a finished temporary file onto `path`, with `output_mode(path)`."""
    os.chmod(tmp, output_mode(path))
    os.replace(tmp, path)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block is done: renames that belong together (a graph and its data file,
    the graphs of one export) are all made or none. A signal that came meanwhile is raised again at the end of the
    block, under the handler it would have met. Handlers, not a signal mask: a mask holds a signal for one thread
    only, and the kernel hands a process's signal to any thread that does not block it (torch's and onnxruntime's
    workers). Only the main thread sets handlers; elsewhere, or under a handler Python did not install, a no-op."""
    names = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in names}
    if threading.current_thread() is not threading.main_thread() or None in previous.values():
        yield
        return
    caught: list[int] = []
    for s in names:
        signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if caught:
            signal.raise_signal(caught[0])


def write_bytes_atomic(path: str | os.PathLike, data: bytes | Iterable[bytes]) -> None:
    """Write `data` (bytes, or chunks of bytes: a file larger than memory) to `path` whole or not at all. The rename
    replaces whatever entry is at `path` (a symbolic link is replaced, never written through); `check_output` first
    where that entry may be the user's."""
    tmp = temp_beside(path)
    try:
        with open(tmp, "wb") as f:
            for chunk in ([data] if isinstance(data, (bytes, bytearray)) else data):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))
