"""A recipe mapping in, a schema model out, or one line naming the file, the key and what
is allowed: pydantic's :class:`~pydantic.ValidationError` told in plast's words.

pydantic reports every problem at once; plast reports the first one a reader meets, in
this order: a mapping's unknown keys (in the file's order) before its fields (in the
schema's order), each field's problems depth first, a missing required key after the
mapping's fields; the cross-field checks (the models' ``model_validator``) only when every
field is right.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

from pydantic import ValidationError

from plastcli.recipes.fields import Where, as_number, describe, is_model, is_union, strip

TYPE_WORDS = {"int_type": "an integer", "string_type": "a string", "bool_type": "true/false",
              "model_type": "a mapping", "float_type": "a number"}


def parse(cls: type, raw: dict, where: Where) -> Any:
    """``cls`` validated from ``raw``: field by field, then the cross-field checks (which
    raise PlastError themselves); PlastError on the first problem."""
    try:
        return cls.model_validate(raw, context={"where": where})
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    found = [(_explain_safely(e, cls, raw), e) for e in errors]
    (_, key, message), first = min(found, key=lambda f: f[0][0])
    if first["type"] == "missing":  # name the mapping's other missing keys too
        others = [str(e["loc"][-1]) for e in errors if e["type"] == "missing"
                  and e["loc"][:-1] == first["loc"][:-1] and e is not first]
        if others:
            message += f" (also missing: {', '.join(others)})"
    where.fail(key, message)


def _explain_safely(err: dict, cls: type, raw: Any) -> tuple[list, str, str]:
    try:
        return explain(err, cls, raw)
    except Exception:  # a loc this walk does not know: still one line, never a traceback
        return [], ".".join(map(str, err["loc"])) or "<root>", err["msg"]


def explain(err: dict, cls: type, raw: Any) -> tuple[list, str, str]:
    """``(order, key, message)`` of one pydantic error: where a reader meets it, the key in
    plast's form (``network.layers``, ``conditions[0].name``, ``meta.bounds.oja``) and the
    message. ``loc`` is walked along the schema's types and the recipe's values."""
    loc, kind = err["loc"], err["type"]
    tp, node, key, order = cls, raw, "", []
    for i, part in enumerate(loc):
        tp = _nullable(tp)
        origin = typing.get_origin(tp)
        if is_model(tp):
            names, parent = list(tp.model_fields), key
            key = f"{key}.{part}" if key else str(part)
            if part not in tp.model_fields:  # extra_forbidden, or a key that is no string
                index, name = _find(node, part)
                order.append((0, index))
                return order, f"{parent}.{name}" if parent else str(name), \
                    f"unknown key; allowed: {', '.join(names)}"
            if kind == "missing" and i == len(loc) - 1:  # reported on the mapping, after it
                order.append((2, names.index(part)))
                return order, f"{parent}.{part}" if parent else str(part), \
                    "required: this key has no default; give it a value"
            order.append((1, names.index(part)))
            tp, node = tp.model_fields[part].annotation, _get(node, part)
        elif origin is list:
            key += f"[{part}]"
            order.append((part,))
            tp, node = typing.get_args(tp)[0], _get(node, part)
        elif origin is dict:
            index, name = _find(node, part)
            key += f".{name}"
            if loc[i + 1:i + 2] == ("[key]",):  # a name outside the allowed ones
                order.append((index, 0))
                allowed = typing.get_args(strip(typing.get_args(tp)[0]))
                return order, key, f"unknown name '{name}'; allowed: {', '.join(allowed)}"
            order.append((index, 1))
            tp, node = typing.get_args(tp)[1], _get(node, part)
        elif is_union(tp):  # part names an arm: the value fits none of them
            return order, key, f"expected {describe(tp)}, got {node!r}"
        else:
            break
    return order, key, _message(kind, err, _nullable(tp))


# pydantic's bound errors -> (how the value fails, the bound's name in the error's ctx)
BOUND_WORDS = {"greater_than_equal": ("is below the minimum", "ge"),
               "greater_than": ("must be above", "gt"),
               "less_than_equal": ("is above the maximum", "le"),
               "less_than": ("must be below", "lt")}


def _message(kind: str, err: dict, tp: Any) -> str:
    value = err["input"]
    if kind == "plast":  # the Number type's own message
        return err["msg"]
    if kind in BOUND_WORDS:  # a number as the float it became (pydantic may report
        value = as_number(value) if strip(tp) is float else value  # what came in)
        words, bound = BOUND_WORDS[kind]
        return f"{value} {words} {err['ctx'][bound]}"
    if kind == "literal_error":
        allowed = typing.get_args(strip(tp)) if typing.get_origin(strip(tp)) is Literal else ()
        if allowed and not isinstance(value, type(allowed[0])):
            return f"expected {TYPE_WORDS['string_type']}, got {value!r}"
        return f"'{value}' is not allowed; allowed: {', '.join(map(str, allowed))}"
    if kind in TYPE_WORDS:
        return f"expected {TYPE_WORDS[kind]}, got {value!r}"
    if kind in ("list_type", "dict_type"):
        return f"expected {describe(tp)}, got {value!r}"
    return f"{err['msg']}, got {value!r}"


def _nullable(tp: Any) -> Any:
    """``X`` for ``X | None`` (pydantic checks it as X or null, with no arm in ``loc``)."""
    tp = strip(tp)
    args = typing.get_args(tp)
    if is_union(tp) and len(args) == 2 and type(None) in args:
        return _nullable(next(a for a in args if a is not type(None)))
    return tp


def _find(node: Any, part: Any) -> tuple[int, Any]:
    """Where ``part`` stands among a mapping's keys, and the key as the file has it
    (pydantic names a key that is no string otherwise: None as 'None', true as 1)."""
    if isinstance(node, dict):
        for i, k in enumerate(node):
            if k == part and type(k) is type(part):
                return i, k
        for i, k in enumerate(node):
            if k == part or str(k) == str(part):
                return i, k
    return 0, part


def _get(node: Any, part: Any) -> Any:
    if isinstance(node, dict):
        if part in node:
            return node[part]
        return next((v for k, v in node.items() if str(k) == str(part)), None)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return None
