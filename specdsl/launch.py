"""`specc train --nproc N`: the same command run by N processes through torchrun, reported as one command; with
--nnodes, by N processes on each of several machines, each running this launcher (rendezvous.py says how they meet).

torchrun prints a traceback of its own whenever a worker exits non-zero, and every worker would print the same
error. So the workers write their report (exit code, message) into a folder instead of printing it
(`SPECC_REPORTS`); the launcher prints rank 0's report once and exits with its code. torchrun's own log lines are
kept back and shown only when it failed without any report (a crash of torchrun or of a worker before it could
report). Signals: torchrun runs in its own session, so Ctrl-C reaches it once, from here: the workers finish their
step, save it and stop; a second Ctrl-C kills torchrun and the workers at once (the checkpoint on disk is whole).
On several machines the report folder is each node's own: the node that holds rank 0 prints its report, the others
stay quiet after a run that succeeded, and otherwise say in one line that rank 0's node tells why the run stopped.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from .rendezvous import Rendezvous

REPORTS = "SPECC_REPORTS"
# torchrun's own lines: glog-style log lines of torch.distributed's logger, and its OMP_NUM_THREADS banner.
_TORCHRUN_LOG = re.compile(r"^([DIWEF]\d{4} [\d:.]+ \d+ .*\] |\*{10,}$|Setting OMP_NUM_THREADS environment variable)")
# torch's C++ log entries (c10's "[W1202 05:49:35.272614317 TCPStore.cpp:138] ...", "[rank1]:" before it once a
# process group names the rank), and the lines of the C++ stack trace that may follow one: a node whose agent still
# listens when the store on rank 0's node closes at the end of a run that succeeded prints such a warning, with 30
# frames.
_TORCH_CPP_LOG = re.compile(r"^(\[rank\d+\]:)?\[[DIWEF]\d{4} [\d:.]+ [^\]]*\] ")
_CPP_TRACE = re.compile(r"^(Exception raised from |frame #\d+: |<omitting python frames>|\s*$)")

# torchrun's last line when the nodes never met: its rendezvous' error (c10d), or its store's (static), as
# torch.distributed.elastic.rendezvous.api.RendezvousTimeoutError or torch.distributed.DistNetworkError: The client
# socket has timed out after 600000ms while trying to connect to (HOST, PORT).
_NOT_MET = re.compile(r"^torch\.[\w.]*(Rendezvous\w*Error|DistStoreError|DistNetworkError)\b")


def launch(nproc: int, argv: list[str], rendezvous: Rendezvous | None = None) -> int:
    """Run `specc ARGV` in `nproc` processes (on this node of `rendezvous`, when given); returns the exit code."""
    meet = rendezvous.torchrun_args() if rendezvous is not None else ["--standalone"]
    with tempfile.TemporaryDirectory(prefix="specc-reports-") as reports, tempfile.TemporaryFile() as log:
        cmd = [sys.executable, "-m", "torch.distributed.run", *meet, f"--nproc_per_node={nproc}",
               "-m", "specdsl.cli"] + argv
        env = {**os.environ, "PYTHONUNBUFFERED": "1", REPORTS: reports}
        proc = subprocess.Popen(cmd, env=env, stderr=log, start_new_session=True)
        received: list[int] = []

        def forward(signum, frame):
            if received:  # the second: stop at once (torchrun starts each worker in a session of its own)
                _kill_all(proc.pid, Path(reports))
            else:  # the first: torchrun passes it on; the workers finish their step, save it and stop
                proc.send_signal(signum)
            received.append(signum)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            code = proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        report = _first_report(Path(reports))
        elsewhere = rendezvous is not None and not Path(reports, "pid.0").exists()  # rank 0 runs on another node
        log.seek(0)
        lines = log.read().decode("utf-8", errors="replace").splitlines()
    return _outcome(code, report, received, lines, rendezvous, elsewhere)


def _outcome(code: int, report: tuple[int, str] | None, received: list[int], lines: list[str],
             rendezvous: Rendezvous | None, elsewhere: bool) -> int:
    """Say once how the run ended, and return the exit code: the workers' report, else what torchrun's log tells."""
    if report is not None:
        code, message = report
        if message:
            print(message, file=sys.stderr)
        elif code and elsewhere:
            print(_stopped_elsewhere(code), file=sys.stderr)
        return code
    if received:  # stopped before a worker could report: what is on disk is a whole checkpoint, or none yet
        print("interrupted; continue with --resume", file=sys.stderr)
        return 128 + received[0]
    not_met = [line for line in lines if _NOT_MET.match(line)] if rendezvous is not None else []
    if code != 0 and not_met:  # torchrun's traceback says no more than its last line
        print(f"error: the nodes did not meet at {rendezvous.endpoint}: {not_met[-1].strip()}\n"
              "hint: start the command on every node within torchrun's 10 minutes, with the same --nnodes, "
              "--rdzv-endpoint and --rdzv-id, and check that each node reaches that address and port",
              file=sys.stderr)
        return 1
    if code != 0:
        print("\n".join(lines[-40:]), file=sys.stderr)
        print(f"error: the training processes failed (torchrun exited with {code})", file=sys.stderr)
        return 1
    kept = _workers_own(lines)
    if kept:
        print("\n".join(kept), file=sys.stderr)
    return 0


def _workers_own(lines: list[str]) -> list[str]:
    """The lines of a successful run's log the workers wrote themselves (their warnings): without torchrun's log
    lines and torch's C++ log entries, each with the stack trace under it."""
    kept, in_cpp_entry = [], False
    for line in lines:
        if _TORCH_CPP_LOG.match(line):
            in_cpp_entry = True
        elif not (in_cpp_entry and _CPP_TRACE.match(line)):
            in_cpp_entry = False
            if not _TORCHRUN_LOG.match(line):
                kept.append(line)
    return kept


def _stopped_elsewhere(code: int) -> str:
    """What a node without rank 0 says when its workers stopped because the run did (rank 0 printed why)."""
    if code > 128:
        return ("interrupted: the run stopped after saving its last step (a signal reached one of its nodes); "
                "continue with --resume, on every node")
    return "error: the run stopped; the node that runs rank 0 says why"


def _kill_all(torchrun: int, reports: Path) -> None:
    for pid in [torchrun] + [int(p.read_text()) for p in reports.glob("pid.*")]:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def register_worker() -> None:
    """In a worker of `launch`: leave this process's pid, so that a second Ctrl-C can stop it at once."""
    folder = os.environ.get(REPORTS)
    if folder and os.path.isdir(folder):
        Path(folder, f"pid.{os.environ.get('RANK', '0')}").write_text(str(os.getpid()), encoding="ascii")


def report(code: int, message: str) -> bool:
    """In a worker of `launch`: leave the report for the launcher and return True; elsewhere return False."""
    folder = os.environ.get(REPORTS)
    if not folder or not os.path.isdir(folder):
        return False
    rank = int(os.environ.get("RANK", "0"))
    Path(folder, f"{rank:06d}").write_text(f"{code}\n{message}", encoding="utf-8")
    return True


def _first_report(folder: Path) -> tuple[int, str] | None:
    """The report of the lowest rank that has one with a message (rank 0 says it best), else any code."""
    found = []
    for path in sorted(folder.glob("[0-9]*")):
        code, _, message = path.read_text(encoding="utf-8").partition("\n")
        found.append((int(code), message))
    with_message = [r for r in found if r[1]]
    return (with_message or found or [None])[0]
