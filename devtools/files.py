"""Files the dev tools rewrite while other processes may read them."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, text: str, *, mode: int = 0o666) -> None:
    """Replace `path` with `text` in one step: a concurrent reader (a second `sandbox up`, a shell
    sourcing the env file, a test finding a pid) sees the old file or the new one, never part of
    either. `mode` (less the umask) holds from the first byte written, so a file that carries a key
    or a token is never readable by others, even briefly."""
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temp.unlink(missing_ok=True)  # a leftover from a crash would keep its own mode
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(temp, path)
