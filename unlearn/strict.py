"""The strict pydantic base every config section derives from (unknown keys, inf/nan and true-as-a-number refused).

Its own module so that section schemas living next to what they configure (unlearn.gate_config) can derive
from it while `unlearn.config` imports them: no import cycle.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, field_validator


class Strict(BaseModel):
    # unknown keys are errors (a misspelt key must not train on a default); inf/nan are refused
    # (YAML reads 1e400 as inf: a learning rate of inf trains to NaN instead of failing here)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _a_bool_is_not_a_number(cls, value, info):
        # pydantic's lax mode reads `true` as 1 for an int field: `--set train.steps=true` trained one step
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            kinds = _leaf_types(cls.model_fields[info.field_name].annotation)
            if kinds and kinds <= {int, float, type(None)}:
                raise ValueError(f"expected a number, got {str(value).lower()} (true/false is not a number)")
        return value


def _leaf_types(annotation) -> set:
    """The plain types a field annotation is made of (`int | None` -> {int, NoneType}); empty when any part is
    something else (Literal, a model, Any), so the bool check above applies only to plain number fields."""
    import typing
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
        parts = [_leaf_types(a) for a in args]
        return set().union(*parts) if all(parts) else set()
    if typing.get_origin(annotation) is typing.Annotated:
        return _leaf_types(args[0])
    return {annotation} if annotation in (int, float, type(None)) else set()
