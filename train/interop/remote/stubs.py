"""Stand-ins for ``registry.core`` and ``pydantic`` inside a generated remote-code file.

A remote-code export copies bertsmith's block sources verbatim; their imports of
``registry.core`` (``Params``, ``register``, ``Requirement``), ``registry.errors`` and
``pydantic`` are replaced by the definitions below, so the file needs only torch and
transformers. Settings come from ``config.json`` (already validated when the model was
saved), so params models only need to exist as classes, and ``register`` only needs to
remember which object implements each entry. Never imported by bertsmith itself.
"""


class Params:
    """Base of an entry's params (validation happened in bertsmith before export)."""


def Field(default=None, **_):  # noqa: N802  (pydantic's name)
    return default


def field_validator(*_, **__):
    return lambda f: f


class Requirement:
    """Compatibility declarations are checked in bertsmith, not at load time."""

    def __init__(self, *_, **__):
        pass


class SlotRef:
    """Marks a params field holding another slot's entry (resolved in bertsmith)."""

    def __init__(self, *_, **__):
        pass


def load_plugins():
    """Plugin blocks a remote-code file needs are copied into it: nothing to load."""
    return []


def check_free_memory(model, name, device):
    """transformers allocates the model it loads: no check of bertsmith's here."""


class SpecError(Exception):
    """A spec the blocks cannot build."""


def problem(key, given, allowed) -> str:
    return f"{key}: given {given!r}, allowed: {allowed}"


def choice(key, given, allowed) -> str:
    return f"{key}: given {given!r}, allowed: {', '.join(allowed)}"


class Entry:
    """A registered block: the object that implements it and its params class."""

    def __init__(self, obj, params):
        self.obj, self.params = obj, params


class Registry:
    """Entries by slot and name, filled by ``register`` as the blocks below are defined."""

    def __init__(self):
        self.entries = {}

    def get(self, slot, name):
        return self.entries[slot][name]

    def names(self, slot):
        return list(self.entries.get(slot, {}))

    def resolve(self, slot, name):
        """Specs in config.json name entries, never aliases."""
        return name, {}


REGISTRY = Registry()


def register(slot, name, params=Params, provides=(), requires=(), check=None, aliases=None):
    """Make ``obj`` the ``slot`` entry called ``name``."""

    def deco(obj):
        REGISTRY.entries.setdefault(slot, {})[name] = Entry(obj, params)
        return obj

    return deco
