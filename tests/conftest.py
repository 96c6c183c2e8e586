import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
ZOO = sorted(p for p in SPECS.glob("*.spec"))

# Tests that run torch share two cores with pytest itself: keep torch to one thread.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The on-disk parse cache (specdsl/parse_cache.py) of this test session, processes it starts included: its own
# folder, removed at exit, never the user's ~/.cache.
if "SPECC_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile
    os.environ["SPECC_CACHE_DIR"] = tempfile.mkdtemp(prefix="specc-test-cache-")
    atexit.register(shutil.rmtree, os.environ["SPECC_CACHE_DIR"], True)


def pytest_collection_modifyitems(config, items):
    """Tests marked `big` (a 2.5 GB export) run only when the marker expression names them (`pytest -m big`): a
    plain `pytest` skips them."""
    if "big" in (config.getoption("markexpr", "") or ""):
        return
    skip = pytest.mark.skip(reason="a 2.5 GB export: run it with pytest -m big")
    for item in items:
        if item.get_closest_marker("big") is not None:
            item.add_marker(skip)


def interruptible() -> None:
    """A child's preexec_fn where a test sends it SIGINT: its default again, whatever this process inherited. A
    background job of a non-interactive shell (`make test &`) starts with SIGINT ignored, and so would every child:
    a Ctrl-C the test sends would then do nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def sigint_raises():
    """SIGINT raises KeyboardInterrupt in this process during the test (Python's own handler), even if the suite
    was started with SIGINT ignored (see interruptible)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="session")
def specc_cmd():
    """The installed console script, next to this interpreter."""
    script = Path(sys.executable).parent / "specc"
    return [str(script)] if script.exists() else [sys.executable, "-m", "specdsl.cli"]


def specc_here(*args) -> subprocess.CompletedProcess:
    """`specc ARGS` run in this process through the console script's entry point (`specc` is `specdsl.cli:run`),
    with the exit code, stdout and stderr a subprocess would give, but without a second interpreter importing
    torch again (about 4 s of CPU each time). For tests of what a command says and does; tests of the process
    itself (signals, torchrun, a missing package) start one. An exception escaping `run()`, which a process would
    show as a traceback, propagates and fails the test."""
    from click.testing import CliRunner

    from specdsl.cli import run
    argv = [str(a) for a in args]
    saved, code = sys.argv, 0
    with CliRunner().isolation() as (out, err, _):
        sys.argv = ["specc", *argv]
        try:
            run()
        except SystemExit as exited:  # as the interpreter maps sys.exit's argument to a status
            code = exited.code if isinstance(exited.code, int) else 0 if exited.code is None else 1
            if isinstance(exited.code, str):
                print(exited.code, file=sys.stderr)
        finally:
            sys.argv = saved
            sys.stdout.flush()
            sys.stderr.flush()
        stdout, stderr = (stream.getvalue().decode("utf-8", "replace") for stream in (out, err))
    return subprocess.CompletedProcess(["specc", *argv], code, stdout, stderr)


@pytest.fixture(scope="session")
def crash_reference(tmp_path_factory):
    """bench/crash_consistency.py's run, never interrupted, trained once (a process of its own, seconds) for the
    tests that resume interrupted runs and compare them with it: test_crash.py and test_sigterm.py."""
    sys.path.insert(0, str(ROOT / "bench"))
    import crash_consistency
    out = tmp_path_factory.mktemp("crash") / "reference"
    crash_consistency.reference(out)
    return out


@pytest.fixture(scope="session", autouse=True)
def onnx_op_table_built_once():
    """torch.onnx.export builds its table of ONNX functions for ATen ops anew on every call
    (ONNXRegistry.from_torchlib: onnxscript parses some 500 functions from their source, about 1.3 s of CPU, half
    of a small layer's whole export), and the suite exports a few hundred graphs. Here the table is built once per
    opset and each export gets a copy of it, as fresh as the one torch would build: the files are byte for byte the
    same (measured on mlp, lenet5 and gpt2 with its decoding graph), and
    test_onnx.py::test_the_shared_onnx_op_table_is_the_one_torch_builds compares the tables. Nothing happens in a
    session that has not imported torch (torch-free tests stay so) or lacks the exporter."""
    if "torch" not in sys.modules:
        yield
        return
    try:
        from torch.onnx._internal.exporter import _registration
        build = _registration.ONNXRegistry.from_torchlib.__func__
    except (ImportError, AttributeError):  # another torch: exports build their own table, as they would anyway
        yield
        return
    built = {}

    def from_torchlib(cls, opset_version=_registration._constants.TORCHLIB_OPSET):
        if opset_version not in built:
            built[opset_version] = build(cls, opset_version)
        table = cls()
        table._opset_version = built[opset_version]._opset_version
        table.functions = {op: list(overloads) for op, overloads in built[opset_version].functions.items()}
        return table

    from_torchlib.__wrapped__ = build
    _registration.ONNXRegistry.from_torchlib = classmethod(from_torchlib)
    try:
        yield
    finally:
        _registration.ONNXRegistry.from_torchlib = classmethod(build)
