"""A spec's parameters under a family's names, matched by structure, not by label (issue 11: a spec's labels are
free). Torch-free: it reads the IR only.

A family's rules (hf_naming.py) are written in the labels of one reference spec (hf_naming.REFERENCES: the zoo
spec, or a spec text of its own). A user's spec may label its layers as it likes (`blocks: repeat`, `self_attn:`,
`tok:`); what must agree is the structure:

- a *scope* is the model, or the body of a `repeat` (its iterations numbered {i}, {j} inside; a shared repeat has no
  index, as its parameters have none);
- in each scope, the layers that have parameters, in the order the spec writes them, and the repeats, each
  matching a repeat of the same sharing whose body matches. Layers without parameters (Dropout, GELU, Scale,
  Select) are not part of it: they have no names to map (the architecture checks see the ones that matter, such as
  Gemma's Scale). A labelled block call is no scope of its own: its label only prefixes its layers' names;
- two layers match when their kinds are the same; a parameter keeps its own name within its layer (`qkv.bias`), so
  a layer with or without biases, or with Qwen3's q_norm, matches the same reference layer, and the family's rules
  decide whether that name has a source.

The reference's optional layers (REFERENCES' `optional`: the head a GPT2Model lacks, BERT's pooler) may be absent.
A spec that matches gets, for each parameter, the reference's name: the matched layer's path there, the same
repeat indices, the same local name (`blocks.3.self_attn.qkv.weight` -> `layers.3.attn.qkv.weight`); the family's
rules then apply as to the zoo's own spec, which maps to itself.

Why a reference spec rather than a list of kinds per family: the rules are keyed by the zoo spec's labels, so the
zoo spec already is the structure those names belong to; deriving it from the spec keeps one owner for it. Why
kinds in order rather than labels, shapes or the dataflow: kinds and order are what a renamed copy of the zoo spec
keeps; shapes do not tell ln_1 from ln_2 (the shape check after mapping still catches a wrong size); the order the
spec writes its layers is the order they run in every family here (a spec that writes parallel branches the other
way round is refused, naming the spot, rather than guessed).

Where the structures differ the match stops at the first difference and says which parameter of the spec has no
counterpart and what the family expects there, in the spec's names (with the reference's in parentheses), and
shows that scope of both.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

from .. import ir


@dataclass(frozen=True)
class Leaf:
    """A layer with parameters: its path (with {i} for repeat iterations), kind, local parameter names (tied ones
    too: they are the layer's) and the non-shared repeats around it as (index name "i", count)."""
    path: str
    kind: str
    params: tuple[str, ...]
    loops: tuple[tuple[str, int], ...]
    where: str = ""  # file:line:col of the layer in its spec


@dataclass(frozen=True)
class Loop:
    """A repeat whose body has parameters; `scope` is how its layers' paths begin ("blocks.{i}"; shared: "blocks")."""
    path: str
    shared: bool
    body: tuple
    scope: str
    where: str = ""


def structure(model: ir.Model) -> tuple:
    """The model's scope: its layers with parameters and its repeats, in the order the spec writes them."""
    return _scope(model.root, "", ())


def _scope(module: ir.Module, prefix: str, loops: tuple) -> tuple:
    items = []
    for child in module.children:
        if isinstance(child, ir.Layer):
            if child.params:
                items.append(Leaf(prefix + child.name, child.kind, tuple(p.name for p in child.params), loops,
                                  _where(child.span)))
        elif child.is_repeat:
            inner, inner_loops = f"{prefix}{child.name}.", loops
            if not child.shared:
                index = ir.repeat_index(inner)  # "{i}", "{j}" inside: as the IR's parameter paths
                inner, inner_loops = f"{inner}{index}.", loops + ((index[1:-1], child.count),)
            body = _scope(child, inner, inner_loops)
            if body:
                items.append(Loop(prefix + child.name, child.shared, body, inner[:-1], _where(child.span)))
        else:  # a labelled block call: its label prefixes names, its layers belong to this scope
            items.extend(_scope(child, f"{prefix}{child.name}.", loops))
    return tuple(items)


def _where(span) -> str:
    return str(span) if span is not None and span.file else ""


class Mismatch(Exception):
    """The spec's structure differs from the reference's (`variant`: which one, for a family with several); `text`
    says where, in the spec's names; `matched`: how many layers matched before it."""

    def __init__(self, text: str, matched: int, variant: str = ""):
        super().__init__(text)
        self.text, self.matched, self.variant = text, matched, variant


@dataclass(frozen=True)
class Variant:
    """One compiled reference: what it is called in messages, its scope, its optional layer paths."""
    name: str
    items: tuple
    optional: frozenset


@lru_cache(maxsize=None)
def variants(reference) -> tuple[Variant, ...]:
    """The reference (hf_naming.Reference) compiled, one Variant per preset (zoo spec) or the text's one."""
    from ..elaborate import load, loads
    from ..resources import specs_root
    optional = frozenset(reference.optional)
    if reference.text:
        model = loads(reference.text, name=str(specs_root() / "reference.spec"))
        return (Variant(f"its reference spec '{model.name}' (hf_naming.REFERENCES)", structure(model), optional),)
    out = []
    for preset in reference.presets:
        model = load(specs_root() / reference.spec, preset=preset)
        name = f"specs/{reference.spec}" + (f" --preset {preset}" if preset else "")
        out.append(Variant(name, structure(model), optional))
    return tuple(out)


def reference_names(ours: tuple, reference) -> dict[str, str]:
    """{our parameter name: the reference's}, repeats unrolled (`blocks.3.attn.qkv.weight` ->
    `layers.3.attn.qkv.weight`), by the first variant of `reference` whose structure the spec's (`ours`, from
    structure()) matches. Raises Mismatch for the variant that matched furthest."""
    misses = []
    for variant in variants(reference):
        matcher = _Matcher(variant.optional)
        try:
            matcher.scope(ours, variant.items, "", "")
        except Mismatch as e:
            misses.append((e.matched, variant, e))
            continue
        return _unrolled(matcher.pairs)
    matched, variant, best = max(misses, key=lambda m: m[0])
    others = [v.name for _, v, _ in misses if v is not variant]
    raise Mismatch(best.text, matched, variant.name + (f", closer than {', '.join(others)}" if others else ""))


def _unrolled(pairs) -> dict[str, str]:
    names = {}
    for ours, theirs in pairs:
        placeholders = [p for p, _ in ours.loops]
        for values in itertools.product(*(range(count) for _, count in ours.loops)):
            index = dict(zip(placeholders, map(str, values)))
            for local in ours.params:
                names[f"{ours.path}.{local}".format(**index)] = f"{theirs.path}.{local}".format(**index)
    return names


def _same(ours, theirs) -> bool:
    """The same kind of item; a repeat's body is compared when it is matched."""
    if isinstance(ours, Leaf) and isinstance(theirs, Leaf):
        return ours.kind == theirs.kind
    return isinstance(ours, Loop) and isinstance(theirs, Loop) and ours.shared == theirs.shared


class _Matcher:
    def __init__(self, optional: frozenset):
        self.optional = optional
        self.pairs: list[tuple[Leaf, Leaf]] = []

    def scope(self, ours: tuple, theirs: tuple, our_scope: str, their_scope: str) -> None:
        """Pair our items with theirs in order, skipping their optional layers; raises Mismatch at the first
        difference."""
        k = 0
        for n, item in enumerate(theirs):
            if k < len(ours) and _same(ours[k], item):
                if isinstance(item, Loop):
                    self.scope(ours[k].body, item.body, ours[k].scope, item.scope)
                else:
                    self.pairs.append((ours[k], item))
                k += 1
            elif item.path not in self.optional:
                raise Mismatch(self._describe(ours, k, theirs, n, our_scope, their_scope), len(self.pairs))
        if k < len(ours):
            raise Mismatch(self._describe(ours, k, theirs, len(theirs), our_scope, their_scope), len(self.pairs))

    def _describe(self, ours, k, theirs, n, our_scope, their_scope) -> str:
        expected = _expected(theirs[n], self.optional) if n < len(theirs) else None
        place = f"after {ours[k - 1].path}" if k else f"at the start of {_scope_name(our_scope)}"
        if not ours:
            spot = f"the spec has no layers with parameters; the family expects {expected} first"
        elif k == len(ours):  # the spec's scope ended where the family's goes on
            spot = (f"after {_first_param(ours[k - 1], last=True)} ({_item(ours[k - 1])}), the last of "
                    f"{_scope_name(our_scope)}, the family expects {expected}: the spec lacks that layer")
        else:
            spot = f"{_first_param(ours[k])} ({_item(ours[k])}) has no counterpart: "
            if expected is None:
                spot += f"the family's {_scope_label(their_scope)} has nothing more {place}"
            elif k + 1 < len(ours) and _same(ours[k + 1], theirs[n]):
                spot += f"{place}, the family expects {expected}; the spec has an extra layer there"
            elif n + 1 < len(theirs) and _same(ours[k], theirs[n + 1]):
                spot += f"{place}, the family expects {expected} first; the spec lacks that layer"
            else:
                spot += f"{place}, the family expects {expected}"
        return (f"{spot}.\n  the family's {_scope_label(their_scope)}: {_listing(theirs, their_scope, self.optional)}"
                f"\n  the spec's {_scope_label(our_scope)}: {_listing(ours, our_scope)}")


def _scope_name(scope: str) -> str:
    """A scope inside a sentence ("the last of the top level"); after "the spec's", _scope_label."""
    return scope or "the top level"


def _scope_label(scope: str) -> str:
    return scope or "top level"


def _item(item) -> str:
    where = f", {item.where}" if item.where else ""
    if isinstance(item, Loop):
        return f"{'shared ' if item.shared else ''}repeat {item.path}{where}"
    return f"{item.kind} {item.path}{where}"


def _expected(item, optional) -> str:
    what = f"{'a shared ' if item.shared else 'a '}repeat" if isinstance(item, Loop) else f"{item.kind}"
    return f"{what} (its {item.path}{', optional' if item.path in optional else ''})"


def _first_param(item, last: bool = False) -> str:
    while isinstance(item, Loop):
        item = item.body[-1 if last else 0]
    return f"{item.path}.{item.params[-1 if last else 0]}"


def _listing(items, scope: str, optional=frozenset()) -> str:
    start = len(scope) + 1 if scope else 0
    parts = []
    for item in items:
        label = item.path[start:]
        if isinstance(item, Loop):
            parts.append(f"{label}: {'shared ' if item.shared else ''}repeat {{...}}")
        else:
            parts.append(f"{label}: {item.kind}{' (optional)' if item.path in optional else ''}")
    return ", ".join(parts) if parts else "(nothing)"
