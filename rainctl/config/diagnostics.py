"""One-line error messages for invalid config files.

Every problem is reported as `key.path[index].key: what is wrong`, in the file's own terms,
whatever produced it: pydantic's built-in checks (types, ranges, unknown keys), the models'
single-field checks (`value_error`) or their cross-field checks (`conflict_error`, which
carries one key path per problem). `format_validation_error` turns a pydantic
`ValidationError` into that form: the first problem, plus how many more there are.
"""

from __future__ import annotations

import datetime
import types
import typing
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

Loc = tuple[str | int, ...]
"""A key path inside the file: ("nodes", 2, "address") is `nodes[2].address`."""

Problem = tuple[Loc, str]

VALUE_ERROR_TYPE = "rainctl_value"
"""Error type of single-field checks; the context's `reason` is the whole message."""

CONFLICT_ERROR_TYPE = "config_conflict"
"""Error type of cross-field checks; the context's `problems` holds `Problem`s."""

_INPUT_REPR_CHARS_MAX = 60


def format_loc(loc: Loc) -> str:
    """`("nodes", 2, "address")` -> `nodes[2].address`."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "(top level)"


def value_error(reason: str) -> PydanticCustomError:
    """The error a field validator raises: `reason` becomes the message after the key path."""
    return PydanticCustomError(VALUE_ERROR_TYPE, "{reason}", {"reason": reason})


def conflict_error(problems: list[Problem]) -> PydanticCustomError:
    """The error a model validator raises for cross-field problems, each with its key path."""
    loc, message = problems[0]
    return PydanticCustomError(
        CONFLICT_ERROR_TYPE,
        "{summary}",
        {"summary": f"{format_loc(loc)}: {message}", "problems": tuple(problems)},
    )


def format_validation_error(error: ValidationError, model: type[BaseModel]) -> str:
    """The first problem of `error` as one line, plus "(and N more errors)" if there are more.

    `model` is the model that was validated; it names the allowed keys of unknown-key errors.
    """
    problems = [problem for details in error.errors() for problem in _problems(details, model)]
    loc, message = problems[0]
    text = f"{format_loc(loc)}: {message}"
    more = len(problems) - 1
    if more:
        text += f" (and {more} more error{'s' if more > 1 else ''})"
    return " ".join(text.split())


def _problems(details: ErrorDetails, model: type[BaseModel]) -> Iterator[Problem]:
    kind = details["type"]
    loc = details["loc"]
    context = details.get("ctx", {})
    if kind == CONFLICT_ERROR_TYPE:
        yield from context["problems"]
    elif kind == VALUE_ERROR_TYPE:
        yield loc, str(context["reason"])
    elif kind == "missing":
        yield loc, "required key is missing"
    elif kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        yield loc, f"unknown key (allowed: {', '.join(allowed)})" if allowed else "unknown key"
    elif kind in {"model_type", "model_attributes_type", "dict_type"}:
        yield loc, f"must be a table, got {_describe(details['input'])}"
    elif kind in {"tuple_type", "list_type"}:
        yield loc, f"must be an array, got {_describe(details['input'])}"
    else:
        yield loc, f"{_rephrase(details['msg'])}, got {_describe(details['input'])}"


def _rephrase(message: str) -> str:
    """Pydantic's "Input should be X" -> "must be X"; other messages lose their capital."""
    prefix = "Input should be "
    if message.startswith(prefix):
        return "must be " + message.removeprefix(prefix)
    return message[:1].lower() + message[1:]


def _describe(value: object) -> str:
    """A short, one-line rendering of an offending value with its TOML type."""
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    text = repr(value)
    if len(text) > _INPUT_REPR_CHARS_MAX:
        text = text[: _INPUT_REPR_CHARS_MAX - 3] + "..."
    return f"{text} ({_toml_type(value)})"


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, datetime.date | datetime.time):
        return "date/time"
    return type(value).__name__


def _allowed_keys(model: type[BaseModel], parent: Loc) -> list[str]:
    """The keys the table at `parent` accepts, found by walking the model's annotations."""
    annotation: Any = model
    for part in parent:
        annotation = _unwrap(annotation)
        if isinstance(part, int):
            arguments = typing.get_args(annotation)
            annotation = arguments[0] if arguments else None
        elif _is_model(annotation) and part in annotation.model_fields:
            annotation = annotation.model_fields[part].annotation
        else:
            return []
    annotation = _unwrap(annotation)
    return list(annotation.model_fields) if _is_model(annotation) else []


def _unwrap(annotation: Any) -> Any:
    """The model inside `Model | None`; anything else unchanged."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next((arg for arg in typing.get_args(annotation) if _is_model(arg)), None)
    return annotation


def _is_model(annotation: Any) -> typing.TypeGuard[type[BaseModel]]:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)
