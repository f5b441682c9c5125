"""The base of the TextGenService schema models (spec.py): camelCase pydantic objects whose cross-field `Rule`s go
into the CRD as CEL (`x-kubernetes-validations`) and are checked again, as Python, inside the operator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel


@dataclass(frozen=True)
class Rule:
    """A cross-field rule: `cel` for the API server, `check` (on the pydantic object) for the operator."""

    cel: str
    message: str
    check: Callable[[Any], bool]


def cel_map(values: dict[str, int]) -> str:
    """A Python dict of ints as a CEL map literal."""
    return "{" + ", ".join(f"'{k}': {v}" for k, v in values.items()) + "}"


class SchemaObject(BaseModel):
    """Base: camelCase on the wire, unknown keys rejected, rules checked after field validation."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        json_schema_extra=lambda schema, cls: _add_rules(schema, cls),
    )
    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self):
        failed = [r.message for r in self.rules if not r.check(self)]
        if failed:
            raise ValueError("; ".join(failed))
        return self


def _add_rules(schema: dict[str, Any], cls: type) -> None:
    rules = getattr(cls, "rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [{"rule": r.cel, "message": r.message} for r in rules]
