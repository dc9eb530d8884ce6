"""Writing what a user named, without losing what they have.

``atomic_write`` replaces a file bertsmith owns (a checkpoint, ``spec.yaml``) by a complete
temporary sibling, so a kill or a full disk mid-write leaves the previous file intact.

Every command that writes a file or a directory a user named (``import-hf --out``,
``export --out``) goes through ``check_target`` (before any work) and ``new_dir`` /
``new_file`` (the write): an existing file or non-empty directory is refused in one line
naming the flag unless ``force``; the new content is complete in a temporary sibling before it
is renamed into place, and with ``force`` the old content is moved aside only then and deleted
once the new one is in place.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bertsmith.registry.errors import SpecError


def _plain_mode(mode: int) -> int:
    """``mode`` less the umask: what ``open``/``mkdir`` would have given."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename the result onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, _plain_mode(0o666))  # mkstemp makes 0600; the result should look like any file
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _held(path: Path) -> str | None:
    """What a write to ``path`` would replace, in words; None when nothing is there (no such
    path, or an empty directory)."""
    if path.is_symlink():
        return f"a symbolic link to {os.readlink(path)!r}"
    if not path.exists():
        return None
    if not path.is_dir():
        return "a file"
    try:
        with os.scandir(path) as entries:
            names = sorted(e.name for _, e in zip(range(4), entries, strict=False))
    except OSError as e:
        return f"a directory that cannot be listed ({e.strerror or e})"
    if not names:
        return None
    return "it holds " + ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def check_target(path: Path, flag: str, force: bool = False, directory: bool = True) -> None:
    """Refuse, in one line naming ``flag``, an output path that would replace what a user has
    (a file, a symbolic link, a non-empty directory; for a file output, any directory) unless
    ``force``, or that cannot be created (under a file, without write permission)."""
    path = Path(path)
    held = _held(path)
    if not directory and path.is_dir() and not path.is_symlink():
        raise SpecError(f"{flag}: given {str(path)!r}, a directory; allowed: a file path")
    if held is not None and not force:
        allowed = "a new or empty directory" if directory else "a new file"
        raise SpecError(
            f"{flag}: given {str(path)!r}, which exists; allowed: {allowed} ({held}; "
            "pass --force to replace it)"
        )
    check_writable_dir(path.absolute().parent, flag, given=str(path))


def check_writable_dir(path: str | os.PathLike, key: str, given: str | None = None) -> None:
    """``path`` is a writable directory or can be made one (its nearest existing ancestor is a
    writable directory); one line naming ``key`` (and ``given``, default ``path``) otherwise.
    Creates nothing."""
    base = Path(path).absolute()
    given = str(path) if given is None else given
    while not os.path.lexists(base) and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise SpecError(
            f"{key}: given {given!r}, allowed: a path of directories ({str(base)!r} is not a directory)"
        )
    if not os.access(base, os.W_OK | os.X_OK):  # also false on a read-only file system, root or not
        raise SpecError(
            f"{key}: given {given!r}, allowed: a writable directory ({str(base)!r} is not writable)"
        )


@contextmanager
def _new_parents(path: Path):
    """Create ``path``'s missing parent directories; remove them again if the block fails."""
    missing = []
    parent = path.absolute().parent
    while not os.path.lexists(parent) and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield
    except BaseException:
        for d in missing:  # deepest first; one that is not empty now is someone else's
            try:
                d.rmdir()
            except OSError:
                break
        raise


def _put_in_place(tmp: Path, path: Path, flag: str, force: bool, directory: bool) -> None:
    """Rename the complete ``tmp`` to ``path``. With ``force`` what was there is renamed aside
    first, put back if the rename fails, and deleted once the new content is in place."""
    check_target(path, flag, force, directory)  # again: something may have appeared meanwhile
    aside = path.parent / f".{path.name}.old-{secrets.token_hex(4)}"
    try:
        if _held(path) is None:  # new, or an empty directory (which a rename replaces)
            os.replace(tmp, path)
            return
        os.rename(path, aside)
        try:
            os.rename(tmp, path)
        except BaseException:
            os.rename(aside, path)
            raise
    except OSError as e:  # e.g. a directory another process holds, a full file system
        raise SpecError(
            f"{flag}: given {str(path)!r}, which could not be replaced ({e.strerror or e})"
        ) from None
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)


@contextmanager
def new_dir(path: str | os.PathLike, flag: str, force: bool = False) -> Iterator[Path]:
    """Write the directory ``path`` atomically: the block fills the yielded temporary sibling
    (``.NAME.tmp-XXXX``), which is renamed to ``path`` when the block ends without error. A
    refusal (``check_target``, at entry) or an error in the block leaves the disk as it was:
    the temporary directory and any parent directory made for it are removed."""
    path = Path(path)
    check_target(path, flag, force)
    with _new_parents(path):
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            os.chmod(tmp, _plain_mode(0o777))  # mkdtemp makes 0700; it should look like any directory
            yield tmp
            _put_in_place(tmp, path, flag, force, directory=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def new_file(path: str | os.PathLike, write, flag: str, force: bool = False) -> None:
    """``atomic_write`` of a file a user named: refused (``check_target``) when ``path``
    exists unless ``force``; nothing is left behind by a refusal or a failed write."""
    path = Path(path)
    check_target(path, flag, force, directory=False)
    with _new_parents(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
        os.close(fd)
        try:
            os.chmod(tmp, _plain_mode(0o666))
            write(Path(tmp))
            _put_in_place(Path(tmp), path, flag, force, directory=False)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
