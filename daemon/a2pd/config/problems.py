"""Validation errors as the operator reads them: one ``ConfigProblem`` per error, with its
dotted key, pydantic's wording tidied, a "did you mean" for a mistyped key, and no secret
value quoted."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ValidationError

from a2pd.errors import ConfigProblem

__all__ = ["did_you_mean", "masked", "problems_of"]


def masked(problems: list[ConfigProblem], secrets: list[str]) -> list[ConfigProblem]:
    """``problems`` with any secret value replaced by ``***`` (a validator may quote a value,
    and a secret pasted into the wrong key is still a secret)."""
    secrets = [secret for secret in secrets if secret]
    if not secrets:
        return problems
    longest_first = sorted(set(secrets), key=len, reverse=True)
    masked = []
    for problem in problems:
        key, reason = problem.key, problem.reason
        for secret in longest_first:
            key = key.replace(secret, "***")
            reason = reason.replace(secret, "***")
        masked.append(ConfigProblem(key, reason))
    return masked


def problems_of(exc: ValidationError, model: type[BaseModel], prefix: str = ""
                ) -> list[ConfigProblem]:
    """One problem per validation error of ``model`` (its keys under ``prefix``). An unknown
    key gets a "did you mean" from the keys its table accepts."""
    found = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = [str(p) for p in err["loc"]]
        key = ".".join([prefix, *loc] if prefix else loc)
        # a validator's ValueError reads "Value error, <our text>": the prefix says nothing
        reason = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            reason = "unknown key" + did_you_mean(loc[-1], _known_keys(
                model, err["loc"][:-1]))
        elif err["type"] == "missing":
            reason = "required key is missing"
        found.append(ConfigProblem(key, reason))
    return found


def _known_keys(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The keys the table at ``loc`` inside ``model`` accepts (empty when unknown)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        current = _model_in(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or name for name, f in current.model_fields.items()]
    return []


def _model_in(annotation: Any) -> Any:
    """The BaseModel inside an annotation such as ``list[RouteConfig]`` or ``X | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``known``, or ``""``."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
