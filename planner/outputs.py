"""Where commands write: paths checked before any work, files replaced atomically.

Every command that writes (search -o, show -o/--perfetto, evaluate -o,
profile --out, runtime run --run-dir) checks its output paths first, so a bad
path costs nothing and never destroys an input: `planner search S -o S`
would replace the spec with the plan.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from planner.errors import UserError


class OutputPathError(UserError):
    """An output path that cannot be written, or that names an input."""


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_parent(path: Path, flag: str, shown: str) -> None:
    """The first existing ancestor is a writable directory (an ancestor that is a file
    would make mkdir fail)."""
    anc = _nearest_existing(path.parent)
    if not anc.is_dir():
        raise OutputPathError(f"{flag} {shown}: {anc} is a file, not a directory")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OutputPathError(f"{flag} {shown}: directory {anc} is not writable")
    if anc == path.parent.absolute():
        # os.access is not the whole truth (immutable or read-only mounts): try it.
        try:
            fd, probe = tempfile.mkstemp(dir=anc, prefix=f".{path.name}.", suffix=".probe")
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise OutputPathError(f"{flag} {shown}: cannot write in {anc}: "
                                  f"{err.strerror or err}") from None


def check_output_file(path: str | Path, flag: str, *, inputs: tuple[str | Path | None, ...] = (),
                      others: tuple[tuple[str, str | Path | None], ...] = ()) -> None:
    """`path` can be written as a file: not empty, not a directory, its parent a writable
    directory (or creatable), and not one of `inputs` nor another output in `others`
    ((flag, path) pairs)."""
    shown = repr(str(path)) if not str(path).strip() else str(path)
    if not str(path).strip():
        raise OutputPathError(f"{flag} {shown}: expected a file path")
    p = Path(path)
    if p.is_dir():
        raise OutputPathError(f"{flag} {shown}: is a directory; expected a file path")
    for inp in inputs:
        if inp is not None and _same(p, Path(inp)):
            raise OutputPathError(f"{flag} {shown}: is an input of this command; "
                                  "writing it would destroy it")
    for other_flag, other in others:
        if other is not None and _same(p, Path(other)):
            raise OutputPathError(f"{flag} {shown}: is also the {other_flag} output")
    _check_parent(p, flag, shown)


def check_output_dir(path: str | Path, flag: str, *,
                     inputs: tuple[str | Path | None, ...] = ()) -> None:
    """`path` is or can become a writable directory, and contains no input file."""
    shown = repr(str(path)) if not str(path).strip() else str(path)
    if not str(path).strip():
        raise OutputPathError(f"{flag} {shown}: expected a directory path")
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputPathError(f"{flag} {shown}: is a file, not a directory")
    for inp in inputs:
        if inp is not None and _same(p, Path(inp)):
            raise OutputPathError(f"{flag} {shown}: is an input of this command")
    if p.is_dir():
        if not os.access(p, os.W_OK | os.X_OK):
            raise OutputPathError(f"{flag} {shown}: directory is not writable")
    else:
        _check_parent(p, flag, shown)


def _umask() -> int:
    """The process umask; read from /proc where possible (setting it to read it races
    with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, text: str) -> None:
    """Write a file so readers see the old or the new content, never half of it.

    The file gets the mode a plain open() would give (0666 minus the umask):
    mkstemp's private 0600 is for the temp name, not for the result.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
