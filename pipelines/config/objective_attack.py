"""`search.objective.attack`: robustness as a search objective (issue 25). The section only; what runs it and the
summary keys it adds are `pipelines.search.robustness`."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from unlearn.config import Strict


class ObjectiveAttackConfig(Strict):
    """Robustness as an objective (issue 25): a fixed attack on each trial's eraser after its final eval (never at
    proxy evals), run by `t2vu attack`'s runner (eval.attacks.runner) into <trial>/attack/ (resumed, not redone, on a
    rerun) with the objective's eval config (model, generation, classifier). Its figures join the eval summary, so
    objective.metrics, scalarize weights, constraints and tie-breaks may name them (pipelines.search.robustness):
    `attack_<column>_asr`, `attack_<column>_asr_above_floor` (+ `_se`), `attack_floor`, `attack_rows`, ...; a column
    is an attack result column with `-` and `.` as `_` (softprompt-0.5x -> attack_softprompt_0_5x_asr_above_floor).
    Method baselines are attacked alike (their `method` in place of the eraser)."""

    config: str | dict[str, Any] = Field(description=(
        "The attack: an attack config YAML (relative to this config, e.g. ../attack/toy.yaml) or an inline attack "
        "section. Its words, prompts, attack settings and detector are used; its `eval` (the objective's eval config "
        "generates and scores), `methods` (the trial's eraser is attacked) and `mlflow` are not."))
    attacks: list[str] | None = Field(None, description=(
        "The attacks to run (null = the config's list), e.g. [softprompt]: each gives one result column (softprompt "
        "one per budget)."))
    budgets: list[float] | None = Field(None, description=(
        "softprompt budgets in multiples of the concept-anchor embedding distance (null = the config's), e.g. [0.5]."))
    limit: int = Field(8, ge=1, description=(
        "First N attacked rows of the config's prompts (its prompts.limit): per trial, N videos per column and "
        "restart, plus N benign-prompt videos (the floor) of the eraser and of the base model."))
    preserve_limit: int = Field(0, ge=0, description=(
        "Rows of the config's preserve prompts generated per method; 0 = none (the objective's eval measures "
        "preservation)."))
    steps: int | None = Field(None, ge=1, description=(
        "Optimisation steps of every white-box attack (softprompt, inversion, discrete; null = the config's). Below "
        "evaluation strength (180) the attack is weaker: a fixed yardstick to rank trials by, not a robustness claim."))
    restarts: int | None = Field(None, ge=1, description=(
        "Starts of softprompt and inversion per row (null = the config's); a row counts when any start succeeds."))
    overrides: dict[str, Any] = Field(default_factory=dict, description=(
        "Other dotted overrides of the attack config, applied last, e.g. {softprompt.lr: 0.1, prompts.path: x.csv}."))

    @field_validator("attacks")
    @classmethod
    def _each_once(cls, v: list[str] | None) -> list[str] | None:
        # the names are checked against the attack schema where the attack config loads (pipelines.search.robustness)
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError(f"attacks {v}: name at least one, each once (or null for the config's list)")
        return v

    def attack_overrides(self) -> dict[str, Any]:
        """The dotted overrides this section makes to its attack config (its `overrides` last)."""
        out: dict[str, Any] = {"prompts.limit": self.limit, "mlflow.enabled": False}
        out.update({"preserve.limit": self.preserve_limit} if self.preserve_limit else {"preserve.path": None})
        if self.attacks is not None:
            out["attacks"] = list(self.attacks)
        if self.budgets is not None:
            out["softprompt.budgets"] = list(self.budgets)
        for sec in ("softprompt", "inversion", "discrete") if self.steps is not None else ():
            out[f"{sec}.steps"] = self.steps
        for sec in ("softprompt", "inversion") if self.restarts is not None else ():
            out[f"{sec}.restarts"] = self.restarts
        return {**out, **self.overrides}
