"""The `specc` process's end (specdsl/quick_exit.py): once torch is loaded it skips the interpreter's teardown, and
must still exit with the code sys.exit would give, flush what was printed and run the atexit handlers."""

import subprocess
import sys

import pytest

from conftest import ROOT

pytest.importorskip("torch")

PROGRAM = """
import atexit, sys
import torch
from specdsl.quick_exit import leave
atexit.register(lambda: print("handler ran"))
print("printed", end=" ")
sys.stderr.write("said")
leave({code})
"""


@pytest.mark.slow  # a process that imports torch
@pytest.mark.parametrize("code, status", [("None", 0), ("3", 3), ("'a message'", 1)])
def test_leave_exits_as_sys_exit_flushed_with_the_handlers_run(code, status):
    done = subprocess.run([sys.executable, "-c", PROGRAM.format(code=code)], capture_output=True, text=True,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, timeout=120)
    assert done.returncode == status
    assert done.stdout == "printed handler ran\n"
    assert done.stderr.startswith("said") and ("a message" in done.stderr) == (status == 1)
