"""The files of one export: which precision and layout they take, and how they reach the disk.

Every graph is written under its final name into a staging folder beside the targets (`.tmp-*`, created by
mkdtemp, so it is ours), checked there, and renamed into place only when every check of the export passed; the
folder and whatever is left in it are removed in every case.

Weights go inline in the .onnx, or, for a model whose weights pass EXTERNAL_DATA_THRESHOLD (or with
`--external-data`), into ONE data file beside each graph: `OUT.onnx.data` for `OUT.onnx` (the name torch.onnx gives
its own, `model.onnx.data`). The .onnx names it by a relative location, so the pair can be moved together to another
folder. Because the location is the final name, the data file is staged under that name too, and published before
its .onnx: a published .onnx never points at a missing or temporary file. Torch-free: `specc export` checks the
targets with it before it imports torch.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import Span, SpecError
from ..io import publish, signals_held
from .onnx_weights import is_weight

# Bytes of weights above which they go to a data file. protobuf refuses to serialize a message past 2 GiB
# (onnx.checker: "The proto size is larger than the 2 GB limit"); half of that leaves room for the graph itself.
# Tests lower it (monkeypatch) to exercise the external layout at small size.
EXTERNAL_DATA_THRESHOLD = 1 << 30

# Bytes per weight of each precision `--dtype` offers.
DTYPES = {"fp32": 4, "fp16": 2}


def check_dtype(dtype: str, quantize: str | None) -> None:
    """A SpecError at --dtype unless specc exports that precision (with that --quantize)."""
    if dtype == "bf16":
        raise SpecError("bf16 export is not offered: onnxruntime's CPU provider does not run these graphs in "
                        "bfloat16 (onnxruntime 1.32 rejects the model: 'Type tensor(bfloat16) of input parameter "
                        "... of operator (SplitToSequence) is invalid')", Span("--dtype", 0, 0), hint="--dtype fp16")
    if dtype not in DTYPES:
        raise SpecError(f"unknown --dtype '{dtype}': use {' or '.join(DTYPES)}", Span("--dtype", 0, 0))
    if dtype != "fp32" and quantize:
        raise SpecError(f"--quantize {quantize} quantizes the fp32 weights: it does not combine with --dtype {dtype}",
                        Span("--quantize", 0, 0), hint="export once with --quantize int8, once with --dtype fp16")


def uses_external_data(params: int, dtype: str, forced: bool) -> bool:
    """Whether an export of `params` weights in `dtype` writes them to data files (an unknown dtype, refused by
    check_dtype, counts as fp32)."""
    return forced or params * DTYPES.get(dtype, 4) > EXTERNAL_DATA_THRESHOLD


def data_file(path: str | os.PathLike) -> Path:
    """OUT.onnx.data beside OUT.onnx."""
    path = Path(path)
    return path.with_name(path.name + ".data")


def external_location(path: str | os.PathLike) -> str | None:
    """The data file a .onnx names for its weights (its relative location), or None when they are inline. Reads the
    graph only, never the data."""
    import onnx
    proto = onnx.load(str(path), load_external_data=False)
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            return next((e.value for e in tensor.external_data if e.key == "location"), None)
    return None


def check_data_target(onnx_target: Path) -> None:
    """OUT.onnx.data may be replaced only when it is the data file of the OUT.onnx being replaced (an earlier
    export's): a file of that name the user did not get from specc stays, and the export stops before any work."""
    from ..io import check_output
    target = data_file(onnx_target)
    check_output(target)
    if not target.exists():
        return
    try:
        ours = onnx_target.is_file() and external_location(onnx_target) == target.name
    except Exception:  # not an ONNX file: its neighbour is not ours either
        ours = False
    if not ours:
        raise SpecError(f"cannot write '{target}': it exists and is not the data file of '{onnx_target}'",
                        Span(str(target), 0, 0), hint="move it away, or choose another -o")


class Staging:
    """A folder beside the targets where graphs are written under their final names, then published together."""

    def __init__(self, folder: Path, external: bool):
        self.external = external
        self.folder = Path(tempfile.mkdtemp(dir=os.path.abspath(folder), prefix=".tmp-"))
        self.staged: list[Path] = []  # targets written and not yet published, in the order they were

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def scratch(self, name: str) -> Path:
        """A path in the staging folder for an intermediate file, removed with the folder."""
        path = self.folder / "scratch"
        path.mkdir(exist_ok=True)
        return path / name

    def write(self, proto, target: Path) -> Path:
        """Write `proto` for `target` into the folder (with its data file when external), check it with
        onnx.checker on the path, and return the staged path (onnxruntime loads it from there)."""
        import onnx
        from onnx.external_data_helper import set_external_data
        staged = self.folder / target.name
        if self.external:  # the weights, each at its offset in the one data file; onnx.save_model writes them
            for tensor in proto.graph.initializer:
                # Constants stay inline: onnxruntime's shape inference reads a folded graph's (an int8 file's)
                # split sizes from the .onnx ("Cannot parse data from external tensors").
                if is_weight(tensor) and tensor.HasField("raw_data"):
                    set_external_data(tensor, data_file(target).name)
        onnx.save_model(proto, str(staged))
        onnx.checker.check_model(str(staged))
        self.staged.append(Path(target))
        return staged

    def publish(self) -> None:
        """Rename every staged file onto its target, each data file before its .onnx, with Ctrl-C and SIGTERM held
        until the last (a new data file under an old .onnx, or a new graph beside its predecessor's decoding graph,
        would be a broken pair). An inline graph that replaces an external one (an earlier `--external-data` export
        to the same name) removes that one's data file after it: nothing names it any more, and it can hold
        gigabytes."""
        with signals_held():
            for target in self.staged:
                orphaned = None
                if self.external:
                    _rename(data_file(self.folder / target.name), data_file(target))
                elif _names_its_data_file(target):
                    orphaned = data_file(target)
                _rename(self.folder / target.name, target)
                if orphaned is not None:
                    orphaned.unlink(missing_ok=True)
            self.staged = []


def _names_its_data_file(target: Path) -> bool:
    """Whether `target` is an external export whose weights are in OUT.onnx.data beside it (read only when that
    file exists: the common case, an inline file replacing an inline one, parses nothing)."""
    if not data_file(target).is_file() or not target.is_file():
        return False
    try:
        return external_location(target) == data_file(target).name
    except Exception:  # not an ONNX file: the neighbour is not its data
        return False


def _rename(staged: Path, target: Path) -> None:
    try:
        publish(staged, target)
    except OSError as e:  # the target changed during the export (a folder appeared there, say)
        raise SpecError(f"cannot write '{target}': {e.strerror}", Span(str(target), 0, 0)) from None
