"""The ranks other than 0 follow the run rank 0 started: they read its run directory (run.json, the sources, the
tokens, and on a resume the last checkpoint) instead of resolving the run again. On several machines that works only
when every node sees the run directory at the same path, on a filesystem they share (docs/training.md, "Several
processes, several machines"); checkpoints are written by rank 0 alone.

A node that cannot see it must say so rather than hang in the next collective or crash in a read: each rank waits a
moment for the run rank 0 describes (`RunSeen`: the path, run.json's sha256, the step it resumes from), then every
rank tells the others whether it could follow (`failures`), and rank 0 reports the first rank that could not.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

from ..errors import Span, SpecError
from . import rundir

SHARED_HINT = ("on several machines --out must be a folder every node sees at the same path, on a filesystem they "
               "share (NFS, Lustre, ...); rank 0 alone writes into it")
# NFS clients cache attributes, a folder's for up to acdirmax, 60 s by default (nfs(5)): a file rank 0 wrote a moment
# ago may need that long to appear on another node. A filesystem mounted with a longer acdirmax sets
# SPECC_SHARED_WAIT_S (seconds) to match.
WAIT_S = 60.0
WAIT_ENV = "SPECC_SHARED_WAIT_S"


def wait_seconds() -> float:
    try:
        return max(0.0, float(os.environ[WAIT_ENV]))
    except (KeyError, ValueError):
        return WAIT_S


@dataclass(frozen=True)
class RunSeen:
    """What rank 0 started, as every rank must see it."""

    out: str  # the run directory, absolute: another node's working directory may differ
    record_sha256: str  # of run.json as rank 0 wrote it
    last_step: int | None  # the checkpoint a resumed run starts from

    @classmethod
    def of(cls, run: rundir.RunDir, last_step: int | None) -> RunSeen:
        return cls(os.path.abspath(run.path), rundir.sha256(run.read_bytes(rundir.RECORD)), last_step)

    def problem(self) -> str | None:
        """What this process sees that differs from rank 0's run, or None."""
        run = rundir.RunDir(self.out)
        if not os.path.isdir(self.out):
            return f"no folder '{self.out}'"
        if not os.path.lexists(run.path / rundir.RECORD):
            return f"'{self.out}' holds no {rundir.RECORD}"
        if rundir.sha256(run.read_bytes(rundir.RECORD)) != self.record_sha256:
            return f"'{run.path / rundir.RECORD}' is not the one rank 0 wrote (another run at the same path?)"
        if self.last_step is not None:
            last = run.complete("last")
            step = run.read_json(last.relative_to(run.path) / rundir.MARKER)["step"] if last else None
            if step != self.last_step:
                here = "missing" if step is None else f"of step {step}"
                return f"the last checkpoint of '{self.out}' is {here}; rank 0 resumes from step {self.last_step}"
        return None

    def wait(self, wait_s: float | None = None) -> None:
        """Return once this process sees the run as rank 0 does; a SpecError after `wait_s` seconds (default:
        wait_seconds())."""
        deadline = time.monotonic() + (wait_seconds() if wait_s is None else wait_s)
        while (problem := self.problem()) is not None:
            if time.monotonic() > deadline:
                raise SpecError(f"cannot see the run directory rank 0 started: {problem}",
                                Span("--out", 0, 0), hint=SHARED_HINT)
            time.sleep(0.5)


def failures(problem: SpecError | None, world: int) -> list[tuple]:
    """Every rank's problem in following rank 0, gathered on every rank: (rank, host, message, where, hint) of each
    rank that had one (`problem`, this rank's, or None)."""
    import torch.distributed as dist
    said: list = [None] * world
    mine = None if problem is None else (socket.gethostname(), problem.message, problem.span.file, problem.hint)
    dist.all_gather_object(said, mine)
    return [(rank, *s) for rank, s in enumerate(said) if s is not None]


def as_error(failure: tuple) -> SpecError:
    """Another rank's problem, said by rank 0."""
    rank, host, message, where, hint = failure
    return SpecError(f"rank {rank} (on {host}): {message}", Span(where, 0, 0), hint=hint)
