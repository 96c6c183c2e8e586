"""`specc import`: a spec from a Hugging Face config.json (specdsl/hf_import), compiled before it is shown or
written, so what lands is a spec that compiles; written whole or not at all, and never over an existing file
unless --force. Needs neither torch nor transformers."""

from __future__ import annotations

import errno
import os
import sys

from ..compiled import loads
from ..errors import Span, SpecError
from ..hf_import import import_config
from ..io import check_output, output_mode, publish, temp_beside
from ..text import printable


def import_command(source: str, output: str | None, force: bool) -> None:
    if output is not None:
        _check_new(output, force)  # before any work: a refused -o costs nothing
    imported = import_config(source)
    total = _compiled_total(imported.text, output)
    if output is None:
        sys.stdout.write(imported.text)
    else:
        _write(output, imported.text, force)
    where = f"wrote {printable(output)}: " if output else ""
    print(f"{where}{imported.model_type} ({imported.architecture}), {total:,} parameters", file=sys.stderr)


def _check_new(output: str, force: bool) -> None:
    if os.path.lexists(output) and not force:
        raise SpecError(f"'{output}' exists", Span(output, 0, 0),
                        hint="choose another path, or --force to replace it")
    check_output(output)  # a folder, link or device at the path, or no folder for it: refused even with --force


def _compiled_total(text: str, output: str | None) -> int:
    """The spec compiled as it will be (its `use` found from the folder it is written to): its total. A spec
    that does not compile is never shown or written."""
    try:
        return loads(text, name=output or "<specc import>").analysis.total
    except SpecError as e:
        e.add_note("this spec is what `specc import` made of the config: the config states values no spec of its "
                   "family can have, or `specc import` has a bug")
        raise


def _write(output: str, text: str, force: bool) -> None:
    """A temporary file beside `output`, synced, then renamed onto it (--force) or linked to its name, which fails
    if a file appeared there meanwhile: nothing of anyone else's is replaced."""
    tmp = temp_beside(output)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if force:
            publish(tmp, output)
            return
        os.chmod(tmp, output_mode(output))
        try:
            os.link(tmp, output)
        except FileExistsError:
            raise SpecError(f"'{output}' appeared while it was being written: left as it is",
                            Span(output, 0, 0), hint="--force to replace it") from None
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            if os.path.lexists(output):  # a file system without hard links: the check, then the rename
                raise SpecError(f"'{output}' exists", Span(output, 0, 0), hint="--force to replace it") from None
            os.replace(tmp, output)
    except OSError as e:
        raise SpecError(f"cannot write '{output}': {e.strerror or e}", Span(output, 0, 0)) from None
    finally:
        tmp.unlink(missing_ok=True)
