"""The one YAML reader of recipes and ``spec.yaml``: safe, and bounded — a key given twice in a
mapping is an error (plain PyYAML keeps the last value), and so is an alias (``*name``): an
alias repeats a node without copying its text, so a few lines of nested aliases (a "billion
laughs" document) expand to more nodes than memory holds. Recipes never need one; Hydra's
defaults lists and ``${...}`` interpolation say the same things by name."""

from __future__ import annotations

import yaml


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without duplicate keys or aliases (see the module's docstring)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"an alias (*{event.anchor}); write the value out", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def strict_load(text: str):
    """Parse ``text`` with ``StrictLoader``; raises ``yaml.YAMLError`` (with a mark) or
    ``RecursionError`` (nesting too deep)."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader)
