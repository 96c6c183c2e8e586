"""A Hugging Face config.json, read as transformers reads it, with every mistake located at its field.

`read_config` takes a checkpoint folder or a config file and returns a `Config`: the JSON object and the text it
came from, so an error points at the line of the field it names (`config.json:12:5`, the line and a caret). The
typed readers (`integer`, `number`, `flag`, `string`) take the field's names in transformers' order (the class's
own name first, then its aliases: GPT2Config's `n_embd` answers to `hidden_size`) and the default the transformers
config class gives a field config.json leaves out; they return a `Value`, which says where it came from, for the
comment beside the hyperparameter. Nothing from the file is trusted: wrong types, non-finite numbers and out-of-range
sizes are refused by name. Torch-free: json and the standard library only.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import Span, SpecError
from ..io import open_regular

# config.json files are a few KB; some carry label maps or tokenizer facts, none comes near this.
MAX_CONFIG_BYTES = 4_000_000
# A size (a width, a count of layers or tokens) above this is no model's: refused before it reaches the spec.
MAX_SIZE = 2**48

ABSENT = object()  # a field config.json does not have (null is None: a value transformers may give a meaning)


@dataclass(frozen=True)
class Value:
    """A value read from the config, and where it came from: the field's name, or why a default stands in."""
    value: object
    source: str


def read_config(path: str | os.PathLike) -> Config:
    """The config of a checkpoint folder (its config.json) or a config file, parsed; SpecError when it cannot be."""
    path = Path(os.fspath(path))
    where = Span(str(path), 0, 0)
    if not path.exists():
        raise SpecError(f"no such folder or file: '{path}'", where,
                        hint="give a Hugging Face checkpoint folder, or its config.json")
    if path.is_dir():
        path = path / "config.json"
        if not path.exists():
            raise SpecError(f"'{path.parent}' has no config.json", where,
                            hint="give a Hugging Face checkpoint folder, or the config file itself")
    with open_regular(path, Span(str(path), 0, 0)) as f:
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise SpecError(f"'{path}' is larger than {MAX_CONFIG_BYTES:,} bytes: not a config.json",
                        Span(str(path), 0, 0))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"'{path}' is not UTF-8 text (byte {e.start})", Span(str(path), 0, 0)) from None
    return parse_config(text, str(path))


def parse_config(text: str, file: str) -> Config:
    """A Config from config.json's text; JSON errors are located, NaN and Infinity refused (not JSON numbers)."""
    def no_constant(name):
        raise ValueError(f"{name} is not a JSON number")
    try:
        data = json.loads(text, parse_constant=no_constant)
    except json.JSONDecodeError as e:
        raise SpecError(f"not valid JSON: {e.msg}", Span(file, e.lineno, e.colno, source=text)) from None
    except ValueError as e:
        raise SpecError(f"not valid JSON: {e}", Span(file, 0, 0)) from None
    except RecursionError:
        raise SpecError("not valid JSON: nested too deeply", Span(file, 0, 0)) from None
    if not isinstance(data, dict):
        raise SpecError(f"a config.json holds one JSON object, not {_json_type(data)}", Span(file, 1, 1, source=text))
    return Config(data, file, text)


def _json_type(value) -> str:
    """What a JSON value is, in words; a number or a short string shown as itself."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value) if len(value) <= 40 else "a string"
    return "a list" if isinstance(value, list) else "an object"


class Config:
    """config.json's object, with readers that refuse what transformers would not build, naming the field."""

    def __init__(self, data: dict, file: str, text: str | None = None):
        self.data = data
        self.file = file
        self.text = text
        self.defaults: list[tuple[tuple[str, ...], object]] = []  # (names, default) of every typed read

    # -- raw access ---------------------------------------------------------------------------------------------

    def get(self, name: str):
        """The value of a field (a dotted name reads a nested object: "rope_parameters.rope_type"); ABSENT when
        config.json lacks it (or a parent is not an object), None when it is null."""
        value = self.data
        for part in name.split("."):
            if not isinstance(value, dict) or part not in value:
                return ABSENT
            value = value[part]
        return value

    def first(self, names) -> tuple[str | None, object]:
        """(name, value) of the first of `names` config.json has, null included; (None, ABSENT) when none."""
        for name in names:
            value = self.get(name)
            if value is not ABSENT:
                return name, value
        return None, ABSENT

    # -- errors -------------------------------------------------------------------------------------------------

    def span(self, name: str | None) -> Span:
        """Where a field is written: the line and columns of its (last) key, found in the text; the file alone
        when it cannot be found (a field left out, a key spelt with escapes)."""
        if name is None or self.text is None:
            return Span(self.file, 0, 0)
        start = 0
        for part in name.split("."):
            match = re.compile('"' + re.escape(part) + r'"\s*:').search(self.text, start)
            if match is None:
                return Span(self.file, 0, 0)
            start = match.end()
        key_start = start - len(match.group(0))
        line = self.text.count("\n", 0, key_start) + 1
        col = key_start - (self.text.rfind("\n", 0, key_start) + 1) + 1
        return Span(self.file, line, col, col + len(part) + 2, source=self.text)

    def error(self, name: str | None, message: str, hint: str | None = None) -> SpecError:
        return SpecError(message, self.span(name), hint=hint)

    # -- typed readers ------------------------------------------------------------------------------------------

    def _read(self, names, default, nullable: bool) -> tuple[str | None, object]:
        self.defaults.append((names, default))
        name, value = self.first(names)
        if value is ABSENT:
            return None, default
        if value is None and not nullable:
            return name, default  # transformers' dataclass default stands in for a null it cannot use
        return name, value

    def _source(self, name: str | None, names, value) -> str:
        if name is None:
            return f"{names[0]} absent: transformers' default"
        return f"{name} null" if value is None else name

    def integer(self, *names: str, default, minimum: int = 1, nullable: bool = False) -> Value:
        """A whole number of at least `minimum` (and at most MAX_SIZE); with `nullable`, null reads as None."""
        name, value = self._read(names, default, nullable)
        if value is None and nullable:
            return Value(None, self._source(name, names, None))
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # 4096.0: json has one number type
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"{name} must be a whole number, not {_json_type(value)}")
        if not minimum <= value <= MAX_SIZE:
            raise self.error(name, f"{name} = {value} is out of range: it must be at least {minimum}"
                             + (f" and at most {MAX_SIZE:,}" if value > MAX_SIZE else ""))
        return Value(value, self._source(name, names, value))

    def number(self, *names: str, default, positive: bool = True, nullable: bool = False) -> Value:
        """A finite float (positive unless told otherwise)."""
        name, value = self._read(names, default, nullable)
        if value is None and nullable:
            return Value(None, self._source(name, names, None))
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(name, f"{name} must be a number, not {_json_type(value)}")
        value = float(value)
        if not math.isfinite(value) or positive and value <= 0 or value < 0:
            raise self.error(name, f"{name} = {value!r} is out of range: it must be a finite number "
                             + ("above 0" if positive else "of at least 0"))
        return Value(value, self._source(name, names, value))

    def probability(self, *names: str, default: float) -> Value:
        """A dropout: at least 0 and below 1 (torch's Dropout takes 1, which zeroes everything; specc does not)."""
        read = self.number(*names, default=default, positive=False)
        if read.value >= 1:
            name = self.first(names)[0]
            raise self.error(name, f"{name} = {read.value!r} is out of range: a dropout is below 1")
        return read

    def flag(self, *names: str, default: bool) -> Value:
        name, value = self._read(names, default, False)
        if not isinstance(value, bool):
            raise self.error(name, f"{name} must be true or false, not {_json_type(value)}")
        return Value(value, self._source(name, names, value))

    def string(self, *names: str, default: str) -> Value:
        name, value = self._read(names, default, False)
        if not isinstance(value, str):
            raise self.error(name, f"{name} must be a string, not {_json_type(value)}")
        return Value(value, self._source(name, names, value))

    def require(self, name: str, value: Value, wanted, why: str, hint: str | None = None) -> None:
        """Refuse a field whose value is not `wanted`: what the spec cannot express, said with `why`."""
        if value.value != wanted:
            shown = json.dumps(value.value)
            raise self.error(name, f"{name} = {shown} cannot be imported: {why}", hint)
