"""Writing files so that a reader never sees half of one: the one atomic write of the package
(`write_atomic`), and its counterpart for a whole folder (`write_folder_atomic`).

The content goes to a temporary file in the target's folder, flushed to disk, which then
replaces the target in one rename; on any failure (an interrupt included) the temporary file
is removed and the target is left as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from skipsearch.errors import SkipsearchError


def write_atomic(path: str | os.PathLike, content: str | bytes, mode: int = 0o644, what: str = "file",
                 make_folder: bool = False) -> Path:
    """Replace `path` with `content` (text is written as UTF-8) readable by all (`mode`: mkstemp
    would leave it private). Its folder must exist unless `make_folder`; `what` names the file
    in errors ("profile", "report", ...)."""
    path = Path(path)
    if make_folder:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.parent.is_dir():
        raise SkipsearchError(f"output folder {path.parent} does not exist; create it or choose another path")
    if path.is_dir():
        raise SkipsearchError(f"{path} is a directory; give a file path inside it for the {what}")
    data = content.encode("utf-8") if isinstance(content, str) else content
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise SkipsearchError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except OSError as exc:
        raise SkipsearchError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def write_folder_atomic(path: str | os.PathLike, fill: Callable[[Path], None], what: str = "folder") -> Path:
    """Build a folder with `fill(temporary)` in a temporary folder beside `path`, then put it in place with
    one rename. An existing `path` (the caller decided it may be replaced) is moved aside first and removed
    once the new one is in place. On any failure the temporary folder is removed and `path` is as it was:
    a reader finds the old folder, the new one, or (for the instant between two renames) none, never half."""
    path = Path(path)
    if not path.parent.is_dir():
        raise SkipsearchError(f"output folder {path.parent} does not exist; create it or choose another path")
    try:
        temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise SkipsearchError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    moved = None  # where an existing `path` waits until the new folder is in place
    try:
        fill(temporary)
        os.chmod(temporary, 0o755)
        for written in temporary.rglob("*"):  # readable by all, whatever mode the writers chose
            os.chmod(written, 0o755 if written.is_dir() else 0o644)
        if path.exists():
            moved = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, moved / path.name)
        os.replace(temporary, path)
    except OSError as exc:
        raise SkipsearchError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    finally:
        if moved is not None:
            if not path.exists():  # the new folder did not arrive (also on an interrupt): put the old one back
                os.replace(moved / path.name, path)
            shutil.rmtree(moved, ignore_errors=True)
        shutil.rmtree(temporary, ignore_errors=True)
    return path
