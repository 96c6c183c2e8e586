"""The docs say what the code does: the standard library's blocks are documented with the parameters they take.
(The kinds' table is generated from their declarations: tests/test_kinds.py.)"""

import re

import pytest

from conftest import ROOT, SPECS

LANGUAGE = (ROOT / "docs" / "language.md").read_text(encoding="utf-8")


def library_blocks() -> dict[str, str]:
    """Block name -> its parameter list, whitespace as one space, from every file of specs/std."""
    blocks = {}
    for path in sorted((SPECS / "std").glob("*.spec")):
        for name, params in re.findall(r"^block (\w+)\((.*?)\)\s*\{", path.read_text(encoding="utf-8"), re.M | re.S):
            blocks[name] = " ".join(params.split())
    return blocks


def test_every_library_block_is_documented_with_its_parameters():
    blocks = library_blocks()
    assert len(blocks) >= 6
    rows = {m.group(1): line for line in LANGUAGE.splitlines() if (m := re.match(r"\| `(\w+)`", line))}
    missing = {name: params for name, params in blocks.items() if f" | `{params}` | " not in rows.get(name, "")}
    assert not missing, "docs/language.md's table of library blocks differs from specs/std"


def fenced_models(text: str):
    """(line, body, the fenced block after it) of every fenced example that defines a model."""
    found = list(re.finditer(r"```(\w*)\n(.*?)```", text, re.S))
    for i, m in enumerate(found):
        body = m.group(2)
        if m.group(1) in ("", "spec") and re.search(r"^model [a-z]\w* \{", body, re.M):  # not a template (NAME)
            after = found[i + 1].group(2) if i + 1 < len(found) else ""
            yield text[:m.start()].count("\n") + 2, body, after


def test_every_spec_example_in_the_docs_compiles_or_fails_as_shown():
    """An example compiles; one the docs show failing fails with the errors they show, at the lines they show."""
    import specdsl
    from specdsl.errors import SpecError
    checked = 0
    for doc in ("README.md", "docs/language.md"):
        for line, body, after in fenced_models((ROOT / doc).read_text(encoding="utf-8")):
            shown = re.findall(r"^\S+?:(\d+:\d+: error: .*)$", after, re.M) if "error:" in after else []
            sets = {k: int(v) for k, v in re.findall(r"--set (\w+)=(\d+)", after)} if shown else {}
            try:
                specdsl.loads(body, name=str(SPECS / "example.spec"), overrides=sets)  # `use` finds specs/std
                assert not shown, f"{doc}:{line}: the docs show this example failing, but it compiles"
            except SpecError as e:
                assert shown, f"{doc}:{line}: a docs example does not compile:\n{e}"
                assert all(s in str(e) for s in shown), f"{doc}:{line}: the docs show other errors than:\n{e}"
            checked += 1
    assert checked >= 10


def test_every_zoo_spec_has_a_row_in_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert [p.name for p in sorted(SPECS.glob("*.spec")) if f"| `{p.name}` |" not in readme] == []


@pytest.mark.slow
def test_the_readme_example_folder_is_a_hugging_face_checkpoint_specc_imports(tmp_path, specc_cmd):
    """README's "Real models" walkthrough starts from docs/examples/make_hf_folder.py: a sharded folder with its
    index and a tokenizer.json, which `specc import` turns into a spec of the same count as transformers loads."""
    import json
    import subprocess
    import sys

    transformers = pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    script, folder = ROOT / "docs" / "examples" / "make_hf_folder.py", tmp_path / "hf-tiny"
    made = subprocess.run([sys.executable, str(script), str(folder)], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    assert (folder / "model.safetensors.index.json").exists() and (folder / "tokenizer.json").exists()
    again = subprocess.run([sys.executable, str(script), str(folder)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "exists" in again.stderr  # never over a folder that exists
    spec = tmp_path / "tiny.spec"
    subprocess.run([*specc_cmd, "import", str(folder), "-o", str(spec)], check=True, capture_output=True)
    shown = subprocess.run([*specc_cmd, "compile", str(spec), "--json"], check=True, capture_output=True, text=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    assert json.loads(shown.stdout)["params"]["total"] == sum(p.numel() for p in model.parameters())
