"""Writing files so that a reader never sees half of one: the one atomic write of the package.

The content goes to a temporary file in the target's folder, flushed to disk, which then
replaces the target in one rename; on any failure (an interrupt included) the temporary file
is removed and the target is left as it was.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

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
