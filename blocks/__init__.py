"""torch.nn building blocks, one file per slot or per block; importing this package registers
them all. Every module in this folder is imported, so a new block is one new file here."""

import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
