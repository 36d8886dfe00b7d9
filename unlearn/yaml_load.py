"""YAML for config files: `yaml.safe_load`, except that a key given twice in one mapping is an error.

PyYAML keeps the last of two equal keys without a word: a config with `rank: 4` and, further down the same
section, `rank: 8` trained at rank 8 while its author read 4 (reliability case config-duplicate-key).
"""

from __future__ import annotations

import yaml


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
