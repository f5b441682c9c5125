"""Operator-side validation: the same rules the CRD enforces (spec.py), checked again on what reaches the operator.

A spec can slip past the API server (an older CRD, a cluster without CEL, an object stored before a rule existed);
the operator then reports it as a Degraded condition and an Event and stops retrying until the spec changes, instead
of crash-looping. No kopf here: handlers.py alone turns InvalidSpec into kopf.PermanentError.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from pydantic import ValidationError

from .image_policy import image_problem
from .pod_customisation import with_pod_defaults
from .spec import ROOT_RULES, TextGenServiceSpec


class InvalidSpec(Exception):
    """The TextGenService spec breaks a rule; `problems` says which, one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid TextGenService: " + "; ".join(problems))


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(["spec", *(str(p) for p in loc)])


class ParsedSpec(NamedTuple):
    """One parse of a TextGenService spec: the typed spec (None when invalid) and the problems (empty when valid).
    Handlers parse once per event and pass this down; status.py and the builders never parse again."""

    spec: TextGenServiceSpec | None
    problems: list[str]

    def require(self) -> TextGenServiceSpec:
        """The typed spec, or InvalidSpec listing every problem."""
        if self.spec is None:
            raise InvalidSpec(self.problems)
        return self.spec


def parse(name: str, spec: Mapping[str, Any] | None) -> ParsedSpec:
    """The parsed spec (None when invalid) and human-readable problems (empty when valid)."""
    problems = [r.message for r in ROOT_RULES if not r.check(name)]
    parsed = None
    try:
        parsed = TextGenServiceSpec.model_validate(with_pod_defaults(spec))
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            msg = err["msg"]
            if err["type"] == "value_error":  # a Rule from spec.py: its message already names the fields
                problems.append(msg.removeprefix("Value error, "))
            else:
                problems.append(f"{_loc(err['loc'])}: {msg}")
    if parsed is not None and (problem := image_problem(parsed.cluster.image)):
        problems.append(problem)
    return ParsedSpec(None if problems else parsed, problems)


def validate(name: str, spec: Mapping[str, Any] | None) -> TextGenServiceSpec:
    """The parsed spec, or InvalidSpec listing every problem."""
    return parse(name, spec).require()
