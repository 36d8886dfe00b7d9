"""The `prompts` / `preserve` sections of an eval config: one prompt CSV and how to read it.

Why a module of its own: public prompt sets ship in many schemas (I2P, ESD, UnlearnDiffAtk,
Ring-A-Bell, MMA-Diffusion), and reading them as they come needs more options than the rest of
the eval config (column conventions, derived seeds, row filters, dedupe, bad rows); they are
re-exported by eval.config. The reader is eval.prompts.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from unlearn.config import Strict

# Seed columns recognised by `seed_column: auto`, in this order: the reference schema, ESD /
# UnlearnDiffAtk / UCE (`evaluation_seed`), I2P (`sd_seed`).
SEED_COLUMNS = ("seed", "evaluation_seed", "sd_seed")
# Guidance columns recognised by `guidance_column: auto`: ESD / UnlearnDiffAtk (`evaluation_guidance`)
# and a plain `guidance_scale`. I2P's `sd_guidance_scale` is not among them on purpose: it records
# the Stable Diffusion settings lexica.art users picked, not an evaluation protocol; name it to use it.
GUIDANCE_COLUMNS = ("evaluation_guidance", "guidance_scale")


class RowFilter(Strict):
    """Keep a row only when `column` passes every predicate set here (and every other filter)."""

    column: str = Field(description="The CSV column to test (a file without it is an error naming its columns).")
    equals: str | None = Field(None, description="The cell, spaces trimmed, equals this text.")
    contains: str | None = Field(None, description=(
        "The cell contains this text (case-sensitive), e.g. `categories` contains `sexual` (I2P)."))
    one_of: list[str] | None = Field(None, description="The cell, spaces trimmed, is one of these texts.")
    ge: float | None = Field(None, description=(
        "The cell is a number >= this, e.g. `nudity_percentage` ge 50 (I2P); a cell that is not a number is a bad "
        "row (so are the other bounds')."))
    gt: float | None = Field(None, description="The cell is a number > this.")
    le: float | None = Field(None, description="The cell is a number <= this.")
    lt: float | None = Field(None, description="The cell is a number < this.")

    @model_validator(mode="after")
    def _some_predicate(self) -> "RowFilter":
        if all(getattr(self, k) is None for k in ("equals", "contains", "one_of", "ge", "gt", "le", "lt")):
            raise ValueError(f"filter on {self.column!r} needs a predicate: equals, contains, one_of, ge, gt, le or lt")
        return self

    def describe(self) -> str:
        parts = [f"{k} {getattr(self, k)!r}" for k in ("equals", "contains", "one_of", "ge", "gt", "le", "lt")
                 if getattr(self, k) is not None]
        return f"{self.column} " + " and ".join(parts)

    def keeps(self, cell: str) -> bool:
        """Whether a row whose `column` holds `cell` is kept; ValueError if a numeric bound meets a non-number."""
        text = cell.strip()
        if self.equals is not None and text != self.equals:
            return False
        if self.contains is not None and self.contains not in cell:
            return False
        if self.one_of is not None and text not in self.one_of:
            return False
        bounds = [(b, op) for b, op in ((self.ge, "ge"), (self.gt, "gt"), (self.le, "le"), (self.lt, "lt")) if b is not None]
        if bounds:
            try:
                v = float(text)
            except ValueError:
                raise ValueError(f"{cell!r} in column '{self.column}' is not a number (filter {self.describe()})") from None
            if not math.isfinite(v):
                raise ValueError(f"{cell!r} in column '{self.column}' is not a finite number (filter {self.describe()})")
            for b, op in bounds:
                if not {"ge": v >= b, "gt": v > b, "le": v <= b, "lt": v < b}[op]:
                    return False
        return True


class PromptsConfig(Strict):
    """A prompt CSV and how its columns map onto (prompt, seed, guidance, concept, concept_type).

    The reference schema is `prompt,seed,concept,concept_type`; other schemas are read as they
    come: a UTF-8 BOM is dropped, seed and guidance columns are found by convention, a leading
    unnamed column (pandas' `to_csv` index: an empty header or `Unnamed: 0`) is recognised as an
    index and dropped, and a file with prompts only gets a distinct seed per row. Every other
    column is kept, handed to the classifier with the row and copied into results.csv as `csv.<name>`.
    """

    path: str | None = Field(None, description="The CSV file (UTF-8). `--prompts` replaces it for the target set.")
    prompt_column: str = Field("prompt", description=(
        "The column holding the prompt text (e.g. `normal prompt` for Ring-A-Bell's clean prompts)."))
    seed_column: str | None = Field("auto", description=(
        "The column of per-row seeds. auto = the first of seed, evaluation_seed (ESD, UnlearnDiffAtk), sd_seed (I2P) "
        "that the file has, else derived seeds (default_seed_policy); a column name = that column (an error if the "
        "file lacks it); null = derived seeds. The column used is reported (summary.json prompt_sets, report.md) and "
        "every row's seed_source is in results.csv."))
    default_seed: int = Field(0, ge=0, description=(
        "The base of derived seeds (rows of a file without a seed column)."))
    default_seed_policy: Literal["plus_row_index", "same"] = Field("plus_row_index", description=(
        "Derived seeds: plus_row_index = default_seed + i, with i the row's 0-based data row in the file (blank "
        "lines not counted; rows dropped by filters, limit, dedupe or bad-row skipping keep their number), so every "
        "row gets its own noise and a row's seed never depends on which other rows are evaluated. same = "
        "default_seed on every row (every prompt on the same noise)."))
    guidance_column: str | None = Field("auto", description=(
        "The column of per-row guidance scales. auto = evaluation_guidance (ESD, UnlearnDiffAtk) or guidance_scale "
        "when the file has one; a column name = that column; null = generation.guidance_scale on every row. An empty "
        "cell uses generation.guidance_scale. Such values were chosen for Stable Diffusion (7.5 and up); CogVideoX's "
        "reference protocol is 6: set null to keep it."))
    concept_column: str | None = Field("concept", description=(
        "The column of each row's concept; optional: copied into results.csv when present, ignored when absent."))
    concept_type_column: str | None = Field("concept_type", description=(
        "The concept's type (e.g. object, style); optional like concept_column."))
    filters: list[RowFilter] = Field(default_factory=list, description=(
        "Keep only rows passing every filter, e.g. [{column: categories, contains: sexual}, {column: "
        "nudity_percentage, ge: 50}]. Applied first; rows dropped are counted in summary.json."))
    dedupe: bool = Field(False, description=(
        "Drop rows repeating an earlier row's prompt, seed and guidance (the same video twice). false = keep them; "
        "either way they are counted (summary.json rows_duplicate, report.md, the console)."))
    on_bad_row: Literal["error", "skip"] = Field("error", description=(
        "A row that cannot be used (empty prompt, bad seed or guidance, wrong field count): error = the file is "
        "refused with every bad row listed; skip = such rows are left out, each one reported with its reason "
        "(summary.json, report.md, the console). `t2vu eval --skip-bad-rows` sets skip."))
    limit: int | None = Field(None, ge=1, description=(
        "First N rows kept, after filters, dedupe and skipped rows (None = all)."))


class PreserveConfig(PromptsConfig):
    """The preserve set: prompts that do NOT name the target (preservation metrics); same options."""

    with_cli_prompts: bool = Field(False, description=(
        "`t2vu eval --prompts X` evaluates X: this preserve set is added to it only when true (default: X alone, so "
        "a user's file is never silently mixed with the config's preserve rows)."))
