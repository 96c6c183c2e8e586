"""One contract over every layer kind (tests/kind_contract.py), from each kind's own examples; and the registry:
kinds register themselves, a name is declared once, every built-in kind has examples and a generated reference."""

from pathlib import Path

import pytest
from kind_contract import check_kind, check_onnx, compile_example, example_inputs

import specdsl
from specdsl.backends.emit_torch import emit_torch
from specdsl.errors import SpecError
from specdsl.kinds import KINDS, Kind, KindError, TorchForm
from specdsl.kinds.reference import current

pytest.importorskip("onnxruntime")

BUILT_IN = {name: kind for name, kind in KINDS.items() if type(kind).__module__.startswith("specdsl.")}
EXAMPLES = [(name, example) for name, kind in BUILT_IN.items() for example in kind.examples]


def test_every_built_in_kind_has_examples_and_a_summary():
    assert {name for name, kind in BUILT_IN.items() if not kind.examples or not kind.summary} == set()


IDS = [f"{k}({e.call})" for k, e in EXAMPLES]


@pytest.mark.parametrize("kind,example", EXAMPLES, ids=IDS)
def test_kind_keeps_its_contract(kind, example, tmp_path):
    """Parameters, FLOPs and the ejected module (the ONNX half is the next test)."""
    check_kind(kind, example, tmp_path, onnx=False)


@pytest.mark.slow
@pytest.mark.parametrize("kind,example", EXAMPLES, ids=IDS)
def test_kind_exports_to_onnx(kind, example, tmp_path):
    """Layers that read a second tensor too (cross-attention's memory, a position bias): the model's inputs."""
    compiled = compile_example(kind, example)
    check_onnx(compiled, specdsl.to_torch(compiled).eval(), example_inputs(compiled)[0], tmp_path)


def test_a_kind_registers_itself_and_a_name_is_declared_once():
    class Twice(Kind):  # noqa: F841 - registered by being declared
        name = "TwiceDeclaredForATest"
    try:
        assert type(KINDS["TwiceDeclaredForATest"]).__name__ == "Twice"
        with pytest.raises(KindError, match="two kinds are named 'TwiceDeclaredForATest'"):
            type("Other", (Kind,), {"name": "TwiceDeclaredForATest", "__module__": "elsewhere"})
    finally:
        dict.pop(KINDS, "TwiceDeclaredForATest")


def test_a_kind_name_must_look_like_one():
    with pytest.raises(KindError, match="must be an identifier starting with a capital"):
        type("Bad", (Kind,), {"name": "not a kind"})


@pytest.fixture
def temporary_kind():
    """Declare a kind for one test (it registers itself), and forget it afterwards."""
    declared = []

    def declare(name, **body):
        body.setdefault("output_type", lambda self, a, x: x)
        declared.append(name)
        return type(name, (Kind,), {"name": name, "__module__": "tests.temporary", **body})

    yield declare
    for name in declared:
        dict.pop(KINDS, name, None)


@pytest.mark.parametrize("torch_form,message", [
    (None, "layer kind 'Uncooked' has no torch form"),
    (lambda self, a: TorchForm("NoSuchClass"), "'NoSuchClass', which specc does not have|cannot be imported"),
    (lambda self, a: TorchForm("no_such_package.layers:Thing"), "'no_such_package.layers:Thing'"),
])
def test_a_kind_without_a_usable_torch_form_is_a_located_error(temporary_kind, torch_form, message, tmp_path):
    """Before: a bare KeyError from to_torch, and an --emit-torch file that did not import (exit 0)."""
    temporary_kind("Uncooked", **({"torch_form": torch_form} if torch_form else {}))
    compiled = specdsl.loads("model m {\n    input x: float[2, 4]\n    return x -> Uncooked()\n}\n", name="u.spec")
    for build in (specdsl.to_torch, lambda c: emit_torch(c.model)):
        with pytest.raises(SpecError, match=message) as caught:
            build(compiled)
        assert str(caught.value.span) == "u.spec:3:17"


def test_the_docs_reference_is_generated_from_the_declarations():
    """docs/language.md's table of kinds is what specdsl/kinds/reference.py makes of today's declarations."""
    docs = (Path(__file__).resolve().parent.parent / "docs" / "language.md").read_text(encoding="utf-8")
    assert current(docs) == docs, "run: python -m specdsl.kinds.reference docs/language.md"
    assert all(f"| `{name}` |" in docs for name in BUILT_IN)
