"""Writing files so that a reader never sees half of one: the one atomic write of the package.

The text goes to a temporary file in the target's folder, which then replaces the target in
one rename; on any failure the temporary file is removed and the target is left as it was.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import SkipsearchError


def write_atomic(path: str | Path, content: str | bytes, mode: int = 0o644) -> None:
    """Replace `path` with `content` (text is written as UTF-8); its folder must exist."""
    path = Path(path)
    data = content.encode("utf-8") if isinstance(content, str) else content
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise SkipsearchError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except OSError as exc:
        raise SkipsearchError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
