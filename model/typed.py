"""Typed settings: a dataclass field that carries its meaning and the values it takes, so that a
section of settings (a config section, google/ffn's inference options) defines each default, type
and range once, and one function checks them all."""
import copy
from dataclasses import MISSING, field, fields
from typing import Any, Optional, Sequence


def setting(default: Any, doc: str, *, choices: Sequence[Any] = (), at_least: Optional[float] = None,
            above: Optional[float] = None, below: Optional[float] = None, kind: Optional[str] = None):
    """A dataclass field: `default`, what it means, and its valid values (one of `choices`; >=
    at_least, > above, < below; for a list, each element). kind: the type's name when the default's
    type does not say it ("int3": three integers z, y, x; "mapping")."""
    meta = {"doc": doc, "choices": tuple(choices), "at_least": at_least, "above": above, "below": below,
            "kind": kind or ("int3" if isinstance(default, (list, tuple)) else type(default).__name__)}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def default_of(f):
    """A dataclass field's default (made afresh for a list or dict)."""
    return f.default_factory() if f.default_factory is not MISSING else f.default


def declared(cls):
    """The fields of a settings dataclass that are settings (made with `setting`), in order."""
    return [f for f in fields(cls) if "doc" in f.metadata]


_KINDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
          "int3": "a list of 3 integers [z, y, x]", "mapping": "a mapping", "dict": "a mapping"}


def problem(f, value) -> Optional[str]:
    """Why `value` does not fit field `f` (its type, choices and range), or None."""
    meta = f.metadata
    kind = meta["kind"]
    ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "str": lambda v: isinstance(v, str), "bool": lambda v: isinstance(v, bool),
          "int3": lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(
              isinstance(x, int) and not isinstance(x, bool) for x in v),
          "mapping": lambda v: isinstance(v, dict), "dict": lambda v: isinstance(v, dict)}[kind](value)
    if not ok:
        return f"must be {_KINDS[kind]} (got {value!r})"
    if meta["choices"] and value not in meta["choices"]:
        return f"must be one of {', '.join(map(str, meta['choices']))} (got {value!r})"
    values = list(value) if kind == "int3" else [value]
    lo, above, below = meta["at_least"], meta["above"], meta["below"]
    if any((lo is not None and v < lo) or (above is not None and v <= above) or (below is not None and v >= below)
           for v in values):
        return f"must be {range_text(meta)} (got {value!r})"
    return None


def range_text(meta) -> str:
    """'>= 1', '> 0', 'in (0, 1)', 'in [0, 1)' ..."""
    lo, above, below = meta["at_least"], meta["above"], meta["below"]
    if below is not None:
        left = f"[{lo:g}" if lo is not None else f"({above:g}" if above is not None else "(-inf"
        return f"in {left}, {below:g})"
    return f">= {lo:g}" if lo is not None else f"> {above:g}" if above is not None else "any value"
