"""Transfer attacks (issue 25): replay a saved set of attacked inputs, found against one defended model (another
eraser, the base model, another method), against the methods of this run.

Every `t2vu attack` output keeps what each attack made: `attacks/<attack>/<victim>/attacked.json` (per row its
text prompt, whether it has an embedding, the attack's info, and — written since transfer exists — the row's
prompt and benign anchor) and `embeds.safetensors` (the embeddings, [L, D] or [R, L, D] with R restarts). A
`transfer` entry of the attack config names such a folder; its column `transfer-<label>` generates exactly
those inputs with each row's seed, so replaying a set against the model it was found on reproduces that
attack's rows, and replaying it against another eraser measures how the attack transfers.

The saved set must cover the run's rows (matched by row id; where the set recorded prompts they must be the
same), and its embeddings must have the model's text shape: checked when the run is planned (one line naming
the field and the fix), before anything is generated.
"""

from __future__ import annotations

import json
from pathlib import Path

from eval.attacks.base import Attack, Attacked
from unlearn.config import ConfigError

META, EMBEDS = "attacked.json", "embeds.safetensors"


def default_label(source: str | Path) -> str:
    """<attack>-from-<victim> of a saved set's folder attacks/<attack>/<victim>."""
    p = Path(source)
    return f"{p.parent.name}-from-{p.name}"


class TransferAttack(Attack):
    """options: source (the saved set's folder), the digest of its files (a changed set is a new attack)."""

    kind = "transfer"

    def __init__(self, name: str, source: Path, field: str):
        from unlearn.fsutil import file_sha256

        self.field = field
        meta_path = source / META
        try:
            self.meta = json.loads(meta_path.read_text())
            rows = self.meta["rows"]
            self.saved = {r["id"]: r for r in rows}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{field}: {meta_path} is not a saved attack set ({type(exc).__name__}: {exc}); point "
                              "it at attacks/<attack>/<victim> of a finished `t2vu attack` output") from None
        emb = source / EMBEDS
        has_embeds = any(r.get("embeds") for r in rows)
        if has_embeds and not emb.is_file():
            raise ConfigError(f"{field}: {source} has rows with embeddings but no {EMBEDS}; copy the whole folder")
        super().__init__(name, {"source": str(source), "attack": self.meta.get("attack"),
                                "victim": self.meta.get("victim"),
                                "sha": [file_sha256(meta_path), file_sha256(emb) if has_embeds else None]})
        self.source = source

    def check(self, rows) -> None:
        """Every attacked row is in the saved set, with the same prompt and anchor where the set recorded them."""
        missing = [r.id for r in rows if r.id not in self.saved]
        if missing:
            raise ConfigError(f"{self.field}: the saved set {self.source} has no rows {missing[:5]} (it holds "
                              f"{len(self.saved)}); replay it on the prompts file (and limit) it was made with")
        for r in rows:
            s = self.saved[r.id]
            if (s.get("prompt"), s.get("benign")) not in ((None, None), (r.prompt, r.benign)):
                raise ConfigError(f"{self.field}: row {r.id} of the saved set {self.source} was made for "
                                  f"{s.get('prompt')!r} / {s.get('benign')!r}, this run has {r.prompt!r} / {r.benign!r}")

    def make(self, ctx, rows, base_context) -> list[Attacked]:
        from safetensors.torch import load_file

        embeds = load_file(str(self.source / EMBEDS)) if (self.source / EMBEDS).is_file() else {}
        if embeds:
            want = tuple(ctx.encode([rows[0].benign]).shape[1:])  # [L, D] of this model's text side
            bad = [k for k, e in embeds.items() if tuple(e.shape[-2:]) != want]
            if bad:
                raise ConfigError(f"{self.field}: {self.source}'s embeddings are {tuple(embeds[bad[0]].shape)}, this "
                                  f"model's text embeddings are {want}: a set transfers only between erasers of one "
                                  "base model")
        out = []
        for r in rows:
            s = self.saved[r.id]
            info = {**(s.get("info") or {}), "transfer_from": f"{self.meta.get('attack')}/{self.meta.get('victim')}"}
            out.append(Attacked(r.id, s["text"], embeds.get(r.id) if s.get("embeds") else None, info))
        return out
