"""A real `T5Tokenizer` built offline from an in-memory word list.

No package ships a T5 sentencepiece model and no hub download is possible, so
tiny/toy model directories get a Unigram tokenizer whose pieces are whole
words (scored high) plus single characters (scored low, so unknown words still
tokenise instead of collapsing to <unk>). It is the same class the real
CogVideoX repos use, saves as `tokenizer/` and reloads with
`T5Tokenizer.from_pretrained`.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

SPECIAL = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


def build_t5_tokenizer(words: Iterable[str]):
    """Return a `transformers.T5Tokenizer` whose vocabulary holds `words` as single pieces."""
    from transformers import T5Tokenizer

    seen: set[str] = set()
    vocab: list[tuple[str, float]] = list(SPECIAL)
    vocab.append(("▁", -2.0))
    for w in sorted({w.strip().lower() for w in words if w.strip()}):
        piece = "▁" + w
        if piece not in seen:
            seen.add(piece)
            vocab.append((piece, -1.0))
    for ch in string.ascii_lowercase + string.digits + string.punctuation:
        if ch not in seen:
            seen.add(ch)
            vocab.append((ch, -10.0))
    tok = T5Tokenizer(vocab=vocab, extra_ids=0)
    check_tokenizer(tok, next(iter(sorted(seen - {"▁"}))).lstrip("▁") or "a")
    return tok


def check_tokenizer(tokenizer, known_word: str = "a") -> None:
    """Fail loudly on the silent dummy tokenizer a missing hub id returns."""
    ids = tokenizer(known_word, add_special_tokens=False).input_ids
    unk = tokenizer.unk_token_id
    if len(tokenizer) < 8 or not ids or all(i == unk for i in ids):
        raise RuntimeError(
            f"Tokenizer looks like a placeholder (len={len(tokenizer)}, {known_word!r} -> {ids}). "
            "A T5 tokenizer requested by hub id without local files silently returns a dummy one; "
            "point the model path at a local directory that contains tokenizer/ files."
        )
