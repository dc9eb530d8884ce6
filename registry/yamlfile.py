"""The one YAML reader of recipes and ``spec.yaml``: safe, and bounded — a key given twice in a
mapping is an error (plain PyYAML keeps the last value), and so is an alias (``*name``): an
alias repeats a node without copying its text, so a few lines of nested aliases (a "billion
laughs" document) expand to more nodes than memory holds. Recipes never need one; Hydra's
defaults lists and ``${...}`` interpolation say the same things by name."""

from __future__ import annotations

import os
from pathlib import Path

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
            if not isinstance(key_node, yaml.ScalarNode):  # `? [a, b]: x`: no recipe needs one
                raise yaml.constructor.ConstructorError(
                    None, None, "a key that is a list or a mapping", key_node.start_mark
                )
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def strict_load(text: str):
    """Parse ``text`` with ``StrictLoader``; raises ``yaml.YAMLError`` (with a mark) or
    ``RecursionError`` (nesting too deep)."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader)


MAX_BYTES = 16 * 2**20  # recipes and run configs are a few kB


def read_yaml(path: str | os.PathLike, what: str, max_bytes: int = MAX_BYTES):
    """The parsed YAML file at ``path`` (a regular file of at most ``max_bytes``), read with
    ``StrictLoader``; every problem is one ``SpecError`` line naming the file (and the line)."""
    from bertsmith.registry.errors import SpecError
    from bertsmith.registry.jsonfile import regular_file

    regular_file(path, what, max_bytes)
    given = f"{what}: given {str(path)!r}, allowed:"
    try:
        return strict_load(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SpecError(f"{given} a UTF-8 YAML file") from None
    except OSError as e:
        raise SpecError(f"{given} a readable file ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        why = (getattr(e, "problem", None) or "parse error") + (f" at line {mark.line + 1}" if mark else "")
        raise SpecError(f"{given} valid YAML ({why})") from None
    except RecursionError:  # deeply nested flow collections
        raise SpecError(f"{given} YAML nested less deeply") from None
    except ValueError as e:  # an integer of more than sys.get_int_max_str_digits() digits
        raise SpecError(f"{given} valid YAML ({' '.join(str(e).split(';')[0].split())[:100]})") from None
