"""How the `specc` process ends: without tearing the interpreter down once torch is loaded.

At a normal exit Python clears every module and collects its objects. With torch loaded (and torch._dynamo with
sympy, which every torch optimizer imports) that took 1.4 s of CPU in a bare script loading them (0.07 s this
way), and a 3-step `specc train` process 10.0 s of CPU against 9.5 s this way (medians of 3, a loaded machine):
memory freed that the operating system takes back at once. So, when the command has finished and nothing else
runs: stdout and stderr flushed, the atexit handlers run (logging, temporary directories, torch's own), then
os._exit. Anything unusual (another Python thread alive, a stream that cannot be flushed) gets the ordinary exit.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn


def leave(code) -> NoReturn:
    """End the process with `code` as sys.exit would (None: 0, an int: itself, anything else: printed, 1)."""
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if "torch" not in sys.modules or run_exit_handlers is None or threading.active_count() > 1:
        raise SystemExit(code)  # nothing heavy to tear down, or something we must not cut short
    status = code if isinstance(code, int) else 0 if code is None else 1
    try:
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        raise SystemExit(status) from None  # the interpreter reports a closed or broken stream its own way
    run_exit_handlers()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(status)
