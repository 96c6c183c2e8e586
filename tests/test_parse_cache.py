"""The on-disk parse cache (specdsl/parse_cache.py): a file compiled before is read back without Lark, and the
cache never changes what specc says: a damaged, foreign or unsafe cache is ignored, errors are the parser's own,
and an edited file is parsed again."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import SPECS
from specdsl import parse, parse_cache
from specdsl.errors import SpecError

TEXT = (SPECS / "gpt2.spec").read_text(encoding="utf-8")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache folder of this test's own, and no tree of this process's memory in the way."""
    monkeypatch.setenv("SPECC_CACHE_DIR", str(tmp_path / "cache"))
    parse_cache._folder.cache_clear()
    parse._CACHE.clear()
    yield tmp_path / "cache" / "syntax"
    parse_cache._folder.cache_clear()
    parse._CACHE.clear()


def entries(folder):
    return sorted(p for p in folder.iterdir() if p.name.endswith(parse_cache.SUFFIX)) if folder.exists() else []


def test_a_parsed_file_is_read_back_equal(cache):
    first = parse.parse_text(TEXT, "gpt2.spec")
    assert len(entries(cache)) == 1
    parse._CACHE.clear()
    again = parse_cache.load(TEXT, "gpt2.spec")
    assert again == first and again is not first
    assert parse_cache.load(TEXT + "\n", "gpt2.spec") is None  # another text
    assert parse_cache.load(TEXT, "other.spec") is None  # another name: spans carry it


def test_a_second_process_does_not_import_lark(tmp_path):
    """What the cache is for: the second `specc compile` of a file imports no Lark, and prints the same."""
    env = {**os.environ, "SPECC_CACHE_DIR": str(tmp_path / "cache")}
    code = ("import sys\nsys.argv = ['specc', 'compile', sys.argv[1], '--json']\nfrom specdsl.cli import run\n"
            "try:\n    run()\nexcept SystemExit:\n    pass\n"
            "print('LARK' if 'lark' in sys.modules else 'NO LARK', file=sys.stderr)")
    runs = [subprocess.run([sys.executable, "-c", code, str(SPECS / "gpt4-moe.spec")], capture_output=True,
                           text=True, env=env, timeout=120) for _ in range(2)]
    assert [r.stderr.strip().splitlines()[-1] for r in runs] == ["LARK", "NO LARK"]
    assert runs[0].stdout == runs[1].stdout and '"total"' in runs[0].stdout


def test_errors_are_never_cached(cache):
    bad = "model m {\n    input x: float[4]\n    return x -> Linear(4, 4\n}\n"
    for _ in range(2):
        with pytest.raises(SpecError, match="expected"):
            parse.parse_text(bad, "bad.spec")
    assert entries(cache) == []


def test_a_damaged_entry_is_parsed_again_and_replaced(cache):
    parse.parse_text(TEXT, "gpt2.spec")
    [entry] = entries(cache)
    entry.write_bytes(b"\x80\x05not a pickle")
    parse._CACHE.clear()
    assert parse_cache.load(TEXT, "gpt2.spec") is None
    spec = parse.parse_text(TEXT, "gpt2.spec")
    assert spec.models and parse_cache.load(TEXT, "gpt2.spec") == spec


def test_an_entry_of_another_text_under_this_key_is_refused(cache):
    """A tree is used only for the text and name it was parsed from, whatever file holds it."""
    other = parse.parse_text((SPECS / "mlp.spec").read_text(encoding="utf-8"), "gpt2.spec")
    parse.parse_text(TEXT, "gpt2.spec")
    target = parse_cache._entry(TEXT, "gpt2.spec")
    import pickle
    target.write_bytes(pickle.dumps(other))
    assert parse_cache.load(TEXT, "gpt2.spec") is None


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")
def test_a_folder_others_can_write_is_not_used(cache):
    cache.mkdir(parents=True)
    os.chmod(cache, 0o777)
    parse_cache._folder.cache_clear()
    assert parse_cache._folder() is None
    parse.parse_text(TEXT, "gpt2.spec")
    assert entries(cache) == []


def test_off_writes_nothing_and_an_unwritable_place_still_compiles(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECC_CACHE_DIR", "off")
    parse_cache._folder.cache_clear()
    parse._CACHE.clear()
    assert parse.parse_text(TEXT, "gpt2.spec").models
    (tmp_path / "file").write_text("a file where the folder would be")
    monkeypatch.setenv("SPECC_CACHE_DIR", str(tmp_path / "file"))
    parse_cache._folder.cache_clear()
    parse._CACHE.clear()
    assert parse.parse_text(TEXT, "gpt2.spec").models
    assert (tmp_path / "file").read_text() == "a file where the folder would be"
    parse_cache._folder.cache_clear()


def test_old_entries_are_pruned_and_nothing_else(cache, monkeypatch):
    monkeypatch.setattr(parse_cache, "MAX_ENTRIES", 4)
    cache.mkdir(parents=True)
    (cache / "notes.txt").write_text("not ours")
    stale, fresh = cache / (".tmp-killed" + parse_cache.SUFFIX), cache / (".tmp-writing" + parse_cache.SUFFIX)
    stale.write_bytes(b"left by a killed process")
    fresh.write_bytes(b"being written by another")
    os.utime(stale, (1, 1))
    for i in range(6):
        parse.parse_text(TEXT + f"\n# {i}\n", "gpt2.spec")
    assert 2 <= len(entries(cache)) <= 4
    assert (cache / "notes.txt").read_text() == "not ours"
    assert not stale.exists() and fresh.exists()
