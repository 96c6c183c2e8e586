"""What one elaboration shares across its concerns: the errors collected so far, the blocks being expanded (for the
notes of an error) and the budget that bounds how much a spec may expand.

Errors are collected, not raised at the first one: a failing statement records its SpecError and binds a poison
value so that later statements don't report follow-on errors; everything found is raised together at the end.
"""

from __future__ import annotations

from .. import syntax as S
from ..errors import Span, SpecError

# The elaboration budget. Blocks calling blocks multiply: ten calls a level, six levels, is 10**6 layers from 2 KB
# of text (434 s and 4.5 GiB before these limits). Measured on the 2-core test machine with the worst cases of
# tests/test_hostile_core.py: a layer costs up to 100 us and 2 KB to elaborate, a step (an expression evaluated or a
# block expanded) up to 6 us, so either limit is reached within about 2 s and 50 MB. Real models are far below:
# the zoo's largest takes 19 layers and 114 steps (repeats are a count, not copies), and 200 transformer blocks
# written out by hand (tests/test_hostile_core.py) 1,800 layers and 11,000 steps.
MAX_LAYERS = 20_000  # layers, modules and element-wise ops created
MAX_STEPS = 250_000  # expressions evaluated and blocks expanded


class Abort(Exception):
    """Unwinds a statement whose error is already recorded."""


class ElaborationState:
    """The state every concern of the elaborator reads and extends (elaborate/elaborator.py combines them)."""

    def __init__(self, main: S.SpecFile, saved=None):
        self.main = main
        self.saved = saved  # a run's own copies of its sources (SavedSources): `use` reads these, not the filesystem
        self.sources: dict[str, str] = {}  # name -> text of every file `use`d, in the order read
        self.uses: list[tuple[str, str, str]] = []  # (using file, path as written, file it resolved to)
        self.loaded: dict[str, str] = {}  # the files read so far (real path, or a saved name) -> their name
        self.errors: list[SpecError] = []
        self._seen: set[tuple[str, str]] = set()
        self.blocks: dict[str, S.BlockDef] = {}
        self.call_stack: list[tuple[str, Span]] = []
        self.read_refs: set[str] = set()  # refs of tensor values some expression has read (unused-value check)
        self.model_inputs: list = []  # the model's ir.Inputs, once its body is elaborated
        self._layers = self._steps = 0  # what the elaboration has created and done (the budget, MAX_LAYERS, MAX_STEPS)
        self._over_budget = False

    # ---- errors ----
    def record(self, err: SpecError) -> None:
        for frame_name, frame_span in reversed(self.call_stack):
            err.add_note(f"in block '{frame_name}' called at {frame_span}")
        for d in err.errors:
            key = (str(d.span), d.message)
            if key not in self._seen:
                self._seen.add(key)
                self.errors.append(SpecError(d.message, d.span, d.hint, d.notes))

    def fail(self, message: str, span: Span, hint: str | None = None):
        self.record(SpecError(message, span, hint))
        raise Abort

    def in_source_order(self) -> list[SpecError]:
        """The errors as a reader meets them: the command line's (--set, --preset) first, then this file's by line
        and column (blocks and hyperparameters are checked before the model, wherever they are written), then those
        of used files in the order found."""
        def key(e: SpecError):
            s = e.span
            if s.file == self.main.path:
                return (1, s.line, s.col)
            return (0 if s.file.startswith("--") else 2, 0, 0)
        return sorted(self.errors, key=key)

    # ---- the budget ----
    def spend(self, span: Span, layers: int = 0) -> None:
        """Count one step (and `layers` new IR nodes); past a limit, one located error, and from then on every step
        fails silently, so that the rest of the spec unwinds at once instead of expanding further."""
        if self._over_budget:
            raise Abort
        self._steps += 1
        self._layers += layers
        if self._layers > MAX_LAYERS or self._steps > MAX_STEPS:
            self._over_budget = True
            self.fail(f"the spec expands to more than {MAX_LAYERS:,} layers" if self._layers > MAX_LAYERS else
                      f"the spec takes more than {MAX_STEPS:,} steps to elaborate", span,
                      hint="blocks that call blocks multiply; to apply a block n times write `repeat n { ... }`, "
                           "which is a count, not copies")
