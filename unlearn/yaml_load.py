"""YAML for config files: `read_yaml(path)` (a mapping, or one line naming what is wrong with the file), and
`yaml.safe_load`, except that a key given twice in one mapping is an error.

PyYAML keeps the last of two equal keys without a word: a config with `rank: 4` and, further down the same
section, `rank: 8` trained at rank 8 while its author read 4 (reliability case config-duplicate-key).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from unlearn.errors import ConfigError


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: SafeLoader's own error says so below
                continue
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"duplicate key '{key}' (first at line {first.start_mark.line + 1}); keep one", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def safe_load_unique(text: str):
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def _looks_utf16(raw: bytes) -> bool:
    """A byte-order mark, or bytes that decode as UTF-16 into printable text (a BOM-less UTF-16 file has a NUL
    in every other byte; so can binary junk, which must not be told to run `iconv`)."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return True
    if len(raw) < 2 or (raw[0] == 0) == (raw[1] == 0):
        return False
    try:
        text = raw[: len(raw) // 2 * 2].decode("utf-16-le" if raw[1] == 0 else "utf-16-be")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\t\r\n" for c in text)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"Config {path} is a folder; pass a YAML file, e.g. configs/tiny.yaml")
    if not path.is_file():
        raise ConfigError(f"Config file not found: {path}")
    raw = path.read_bytes()
    if _looks_utf16(raw):
        raise ConfigError(f"Config {path} is UTF-16 text; save it as UTF-8 (e.g. `iconv -f UTF-16 -t UTF-8`)")
    if b"\0" in raw:  # binary (an archive, a checkpoint passed by mistake): no text encoding will fix that
        raise ConfigError(f"Config {path} is not a text file (a NUL byte at offset {raw.index(0)}); pass a YAML "
                          "file, e.g. configs/tiny.yaml")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"Config {path} is not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start}); "
                          "save it as UTF-8") from None
    try:
        data = safe_load_unique(text)  # a key given twice is an error, not "the last one wins"
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"Config {path} is not valid YAML{where}: {what}") from exc
    if data is None:
        # An empty file would silently train on every default (the tiny model, 500 steps): refuse it.
        raise ConfigError(f"Config {path} is empty; start from configs/tiny.yaml or configs/cogvideox-2b-nudity.yaml")
    if not isinstance(data, dict):
        raise ConfigError(f"Config {path} must be a mapping at the top level, got {type(data).__name__}")
    return data
