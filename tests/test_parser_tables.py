"""The shipped parser tables are generated from the grammar, so the grammar stays the one source of truth."""

import hashlib

from specdsl import _parser_tables, grammar_parser
from specdsl.resources import grammar_path


def test_parser_tables_match_the_grammar():
    grammar = grammar_path().read_text(encoding="utf-8")
    assert _parser_tables.GRAMMAR_SHA256 == hashlib.sha256(grammar.encode()).hexdigest(), \
        "grammar/specc.lark changed: regenerate the tables with `python -m specdsl.parse`"


def test_tables_and_grammar_parse_alike():
    text = (grammar_path().parent.parent / "specs" / "gpt2.spec").read_text()
    built = grammar_parser._build_parser(grammar_path().read_text(encoding="utf-8"))
    assert grammar_parser._parser().parse(text) == built.parse(text)
