"""A run directory: everything `specc train` writes, owned by this module alone (torch-free).

    RUN/run.json        the run's identity, written once when it starts: format, spec sources (name, sha256),
                        preset, --set values, settings, the data's fingerprint (bytes, sha256), the tokenizer
                        and the model's contract (specdsl/contract.py: inputs, vocabulary, context, cache); a LoRA
                        run's settings and the base weights it adapts (train/adapters.py)
    RUN/spec.spec       the spec's main file as trained;  RUN/sources/N.spec  each file it `use`s
    RUN/data/           train.bin, val.bin (token ids) and tokenizer.json
    RUN/last/, best/    checkpoints (train/checkpoint.py fills them; `swap_in` puts them in place)
    RUN/metrics.jsonl, summary.json, loss.png
    RUN/.lock           held (flock) by the process that writes the run

What it guarantees:
- A folder that is not a specc run is never written into or deleted from: `--out` must be new, empty, or a run.
- Nothing is written before every check has passed (`plan` reads; `open_for_writing` writes).
- One writer at a time: a second process gets a clear error, not an interleaved run.
- Every file is written by temp-file-and-rename, so a crash leaves the old file or the new one, and a symbolic
  link planted in a run is replaced, never written through (runs holding links are refused anyway).
- A checkpoint swap can be interrupted anywhere: `complete` always finds a whole checkpoint if one was ever written.
- The run is self-contained: it compiles from its own sources and trains on its own tokenized data, and `--resume`
  refuses a changed spec (main or used file), data, preset or `--set` value, naming what changed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import Span, SpecError
from ..io import file_kind, open_regular, write_bytes_atomic
from ..tokenizer import Tokenizer

FORMAT = "specc-run/1"
RECORD = "run.json"
MAIN_SOURCE = "spec.spec"
SOURCES = "sources"
DATA = "data"
METRICS = "metrics.jsonl"
PLOT = "loss.svg"  # redrawn at each evaluation (train/report.py)
TENSORBOARD = "tensorboard"  # the event files of --tensorboard
LOCK = ".lock"
MARKER = "trainer.json"  # a checkpoint folder is complete once this, written last, is there (train/checkpoint.py)
LORA_SETTINGS = ("rank", "alpha", "dropout", "targets")  # run.json's "lora" holds them (train/adapters.py)
_TEMPORARY = (".tmp-", ".trash-")  # prefixes of what an interrupted write may leave; ours to remove


def _where(path) -> Span:
    return Span(str(path), 0, 0)


def finite(value):
    """JSON has no NaN or infinity: such floats become null (json.dumps would write invalid JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(data) -> str:
    return json.dumps(finite(data), indent=1, allow_nan=False)


# ---- what a folder is ----

@dataclass(frozen=True)
class Plan:
    """What `--out` holds, read without writing: `state` is "new" (absent or empty) or "run"; for a run, its record
    and the step of its last complete checkpoint (None: it stopped before its first)."""

    path: Path
    state: str
    record: dict | None = None
    last_step: int | None = None


def plan(path: str | os.PathLike, resume: bool) -> Plan:
    """Check that training may write into `path`; refuse what is not ours. Writes nothing."""
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        info = None
    except OSError as e:
        raise SpecError(f"cannot create the run directory '{path}': {e.strerror}", Span("--out", 0, 0)) from None
    if info is None or (stat.S_ISDIR(info.st_mode) and _is_empty(path)):
        if resume:
            raise SpecError(f"nothing to resume in '{path}': it holds no run", Span("--out", 0, 0),
                            hint="drop --resume to start a new run there")
        if info is None:
            parent = _existing_parent(path)
            if not os.access(parent, os.W_OK | os.X_OK):
                raise SpecError(f"cannot create the run directory '{path}': '{parent}' is not writable",
                                Span("--out", 0, 0))
        return Plan(path, "new")
    if not stat.S_ISDIR(info.st_mode):
        raise SpecError(f"cannot create the run directory '{path}': it is {file_kind(info.st_mode)}",
                        Span("--out", 0, 0), hint="choose a new folder with --out")
    run = RunDir(path)
    record = run.record(hint="specc writes only into new or empty folders and its own runs: choose another --out",
                        where=Span("--out", 0, 0))
    run.check_members()
    last = run.complete("last")
    step = run.read_json(last.relative_to(path) / MARKER).get("step") if last else None
    if step is not None and not resume:
        raise SpecError(f"'{path}' already holds a run (checkpoint at step {step})", Span("--out", 0, 0),
                        hint="pass --resume to continue it, or --out for a new run")
    return Plan(path, "run", record, step)


def _is_empty(path: Path) -> bool:
    """Empty, or holding only the lock of a run that stopped before it wrote anything."""
    try:
        return set(os.listdir(path)) <= {LOCK}
    except OSError as e:
        raise SpecError(f"cannot read the folder '{path}': {e.strerror}", Span("--out", 0, 0)) from None


def _existing_parent(path: Path) -> Path:
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


# ---- a run directory ----

class RunDir:
    """A specc run directory. Reading methods work on any run; writing ones need `lock()` first (and `open_for_writing`
    takes it)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock_fd: int | None = None

    # -- reading --
    def read_bytes(self, name: str | os.PathLike, limit: int | None = None) -> bytes:
        """A member's bytes; every failure is a SpecError naming the file. Symbolic links are refused."""
        path = self.path / name
        with open_regular(path, _where(path), follow_links=False,
                          hint="a run directory holds only the files specc wrote") as f:
            data = f.read() if limit is None else f.read(limit + 1)
        if limit is not None and len(data) > limit:
            raise SpecError(f"'{path}' is larger than {limit:,} bytes: not a file specc wrote", _where(path))
        return data

    def read_json(self, name: str | os.PathLike) -> dict:
        path = self.path / name
        try:
            data = json.loads(self.read_bytes(name, limit=1 << 30).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SpecError(f"'{path}' is damaged: {e}", _where(path),
                            hint="a file of the run was changed or cut short") from None
        if not isinstance(data, dict):
            raise SpecError(f"'{path}' is damaged: not a JSON object", _where(path))
        return data

    def record(self, hint: str = "pass the --out folder of `specc train`", where: Span | None = None) -> dict:
        """run.json, checked to be a specc run's."""
        path = self.path / RECORD
        if not os.path.lexists(path):
            raise SpecError(f"'{self.path}' is not a run directory (no {RECORD})", where or _where(self.path),
                            hint=hint)
        data = self.read_json(RECORD)
        if data.get("format") != FORMAT:
            raise SpecError(f"'{path}' is not a run of this version of specc (format {data.get('format')!r}, "
                            f"expected {FORMAT!r})", _where(path), hint="start a new run in another folder")
        problem = _record_problem(data)
        if problem:
            raise SpecError(f"'{path}' is damaged: {problem}", _where(path),
                            hint="a file of the run was changed; start a new run in another folder")
        return data

    def tokenizer(self) -> Tokenizer:
        """The tokenizer the run's data was made with (data/tokenizer.json)."""
        name = Path(DATA) / "tokenizer.json"
        data = self.read_json(name)
        try:
            return Tokenizer.from_json(data)
        except (KeyError, TypeError, ValueError) as e:
            raise SpecError(f"'{self.path / name}' is damaged: {e}", _where(self.path / name)) from None

    def check_members(self) -> None:
        """Refuse a run that holds symbolic links (one received from someone else could point anywhere)."""
        for folder in (self.path, *(self.path / d for d in (DATA, SOURCES, TENSORBOARD, "last", "best",
                                                            ".last.old", ".best.old"))):
            if folder != self.path and not folder.is_dir():
                continue
            for entry in os.scandir(folder):
                if entry.is_symlink():
                    raise SpecError(f"'{entry.path}' is a symbolic link: a run directory holds only its own files",
                                    _where(entry.path), hint="start a new run in another folder")

    def complete(self, name: str) -> Path | None:
        """The whole checkpoint `name` (last, best): itself, or the previous one set aside by an interrupted swap."""
        for candidate in (self.path / name, self.path / f".{name}.old"):
            marker = candidate / MARKER
            if not candidate.is_symlink() and marker.is_file() and not marker.is_symlink():
                return candidate
        return None

    # -- writing --
    def lock(self) -> None:
        """Hold the run's lock until this process ends; a second writer is refused with the holder's pid."""
        path = self.path / LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise SpecError(f"cannot lock the run directory '{self.path}': {e.strerror}", _where(self.path)) \
                from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise SpecError(f"'{self.path}' is being written by another specc process (pid {holder})",
                            _where(self.path), hint="wait for it to finish, or train into another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def write_bytes(self, name: str | os.PathLike, data: bytes | Iterable[bytes]) -> None:
        write_bytes_atomic(self.path / name, data)

    def write_json(self, name: str | os.PathLike, data: dict) -> None:
        self.write_bytes(name, dumps(data).encode("utf-8"))

    def append(self, name: str):
        """A text file opened for appending (metrics), never through a link; `write_bytes` it first to start it."""
        fd = os.open(self.path / name, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        return os.fdopen(fd, "a", encoding="utf-8")

    def swap_in(self, name: str, fill: Callable[[Path], None]) -> None:
        """Replace checkpoint folder `name` by what `fill(folder)` writes (MARKER last). At every moment one of
        `name` and `.name.old` is a whole checkpoint if any was ever written; `complete` finds it."""
        target, old, tmp = self.path / name, self.path / f".{name}.old", self.path / f".{name}.tmp"
        if self.complete(name) == old:  # an earlier swap stopped between its two renames: undo it first
            if os.path.lexists(target):
                self.discard(target)
            os.rename(old, target)
        for leftover in (old, tmp):
            if os.path.lexists(leftover):
                self.discard(leftover)
        tmp.mkdir()
        fill(tmp)
        _fsync_dir(tmp)
        if os.path.lexists(target):
            os.rename(target, old)
        os.rename(tmp, target)
        _fsync_dir(self.path)
        if os.path.lexists(old):
            self.discard(old)

    def discard(self, path: Path) -> None:
        """Delete one of our own entries: renamed away first, so a crash mid-delete never leaves a half folder under
        a name `complete` looks at."""
        trash = self.path / f".trash-{uuid.uuid4().hex}"
        os.rename(path, trash)
        _remove(trash)

    def clean_leftovers(self) -> None:
        """Remove what interrupted writes of ours left (temporary files, folders set aside for deletion)."""
        for folder in (self.path, self.path / DATA):
            if not folder.is_dir():
                continue
            for entry in os.scandir(folder):
                if entry.name.startswith(_TEMPORARY):
                    _remove(Path(entry.path))


def _record_problem(data: dict) -> str | None:
    """What is wrong with run.json's shape, or None: it is read back into settings and file names."""
    from ..settings import TrainConfig, setting_type

    def strings(value, n=None):
        return isinstance(value, list) and all(isinstance(v, str) for v in value) and (n is None or len(value) == n)

    sources = data.get("sources")
    if not (isinstance(sources, list) and sources and all(
            isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("sha256"), str)
            for s in sources)):
        return "'sources' is not a list of files"
    if not (isinstance(data.get("uses"), list) and all(strings(u, 3) for u in data["uses"])):
        return "'uses' is not a list of links"
    if not isinstance(data.get("preset"), (str, type(None))):
        return "'preset' is not a name"
    if not isinstance(data.get("overrides"), dict):
        return "'overrides' is not an object"
    if not isinstance(data.get("tokenizer"), (dict, type(None))) or not isinstance(data.get("data"), dict):
        return "'tokenizer' or 'data' is not an object"
    config = data.get("config")
    if not isinstance(config, dict) or set(config) != set(TrainConfig.names()):
        return "'config' does not hold the training settings"
    for name, value in config.items():
        want = setting_type(name)
        if value is not None and not (isinstance(value, want) and (want is not int or not isinstance(value, bool))
                                      or want is float and type(value) is int):
            return f"setting '{name}' is {value!r}"
    return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_for_writing(p: Plan) -> RunDir:
    """Create (if new) and lock the run directory of a plan, then check that nothing changed since the plan was made
    (another process may have started in the meantime)."""
    try:
        p.path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SpecError(f"cannot create the run directory '{p.path}': {e.strerror}", Span("--out", 0, 0)) from None
    run = RunDir(p.path)
    run.lock()
    try:
        again = plan(p.path, resume=p.state == "run")
        if (again.state, again.last_step) != (p.state, p.last_step):
            raise SpecError(f"'{p.path}' changed while this run was being prepared", Span("--out", 0, 0),
                            hint="another process wrote into it; start again")
        run.clean_leftovers()
    except BaseException:
        run.unlock()
        raise
    return run


def open_existing(path: str | os.PathLike) -> RunDir:
    """A finished or running run, for reading (sample, export): checked to be a specc run without links."""
    run = RunDir(path)
    try:
        folder = stat.S_ISDIR(os.stat(run.path).st_mode)
    except OSError as e:
        raise SpecError(f"'{run.path}' is not a run directory: {e.strerror}", _where(run.path),
                        hint="pass the --out folder of `specc train`") from None
    if not folder:
        raise SpecError(f"'{run.path}' is not a run directory", _where(run.path),
                        hint="pass the --out folder of `specc train`")
    run.record()
    run.check_members()
    return run


# ---- the run's identity: sources and data ----

def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def changes(saved: dict, now: dict, keys) -> list[str]:
    """'key: old -> new' for each of `keys` whose value differs."""
    return [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]


def source_changes(saved: list[dict], now: list[dict]) -> list[str]:
    """What differs between two source lists ({name, sha256}, the main file first), in words. Files are compared
    by content: the same spec reached by another path is the same spec."""
    out = []
    if saved[0]["sha256"] != now[0]["sha256"]:
        out.append(f"the spec '{now[0]['name']}' is not the one the run was trained from")
    old = {s["sha256"]: s["name"] for s in saved[1:]}
    new = {s["sha256"]: s["name"] for s in now[1:]}
    out += [f"the used file '{name}' is not as it was" for digest, name in new.items() if digest not in old]
    names = set(new.values())
    out += [f"the spec no longer uses '{name}'" for digest, name in old.items() if digest not in new
            and name not in names]
    return out


def describe(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in values.items()) or "none"


def source_file(index: int) -> str:
    """Where a run keeps its index-th source: the main file as spec.spec, the files it uses as sources/N.spec."""
    return MAIN_SOURCE if index == 0 else f"{SOURCES}/{index}.spec"


def compile_run(run: RunDir, preset: str | None = None, overrides: dict | None = None):
    """(Compiled, record) of a run as it was trained, from its own saved sources, preset and --set values. A preset
    or --set value that differs from the run's is refused: the checkpoint holds that architecture's weights."""
    from ..compiled import load_saved
    record = run.record()
    changed = [f"--preset: {record.get('preset')!r} -> {preset!r}"] if preset not in (None, record.get("preset")) \
        else []
    changed += [f"--set {k}: {record['overrides'].get(k)!r} -> {v!r}" for k, v in (overrides or {}).items()
                if record["overrides"].get(k) != v]
    if changed:
        raise SpecError(f"'{run.path}' was trained with other values: " + "; ".join(changed), _where(run.path),
                        hint="its checkpoint holds the weights of the model it trained; drop --preset and --set")
    sources = []
    for i, entry in enumerate(record["sources"]):
        text = run.read_bytes(source_file(i), limit=1 << 24).decode("utf-8", errors="replace")
        if sha256(text.encode()) != entry["sha256"]:
            raise SpecError(f"'{run.path / source_file(i)}' was changed after the run saved it", _where(run.path),
                            hint="a run compiles from its own copy of the spec")
        sources.append((entry["name"], text))
    lora = record.get("lora")
    if lora is not None and not (isinstance(lora, dict) and all(k in lora for k in LORA_SETTINGS)):
        raise SpecError(f"run.json of '{run.path}' has damaged LoRA settings", _where(run.path))
    return load_saved(sources, [tuple(u) for u in record["uses"]], record["preset"], record["overrides"],
                      {k: lora[k] for k in LORA_SETTINGS} if lora else None), record
