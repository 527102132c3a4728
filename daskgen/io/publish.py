"""Publishing an output on a local disk: write it whole under a hidden name, then rename.

Readers never see a half-written file or folder, and a replaced output is kept
until its successor is in place. The hidden names carry the writer's host and
process id (``.NAME.tmp-HOST-PID-XXXXXXXX``, ``.NAME.old-HOST-PID-XXXXXXXX``), so a
later writer can delete what a killed one left behind.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Callable


def publish_local(path: str, exists: bool, write: Callable[[str], None]) -> str:
    """Write via ``write(tmp)`` beside ``path``, then rename into place (replacing the old one).

    ``write`` creates a file or a folder at the temporary path it is given. Returns
    the absolute path published. Whatever happens, no temporary is left behind by
    this process; those of killed writers on this host are removed first.
    """
    path = os.path.abspath(path)
    parent, name = os.path.split(path.rstrip(os.sep))
    os.makedirs(parent, exist_ok=True)
    remove_stale_temporaries(parent, name)
    owner = f"{socket.gethostname()}-{os.getpid()}"
    tmp = os.path.join(parent, f".{name}.tmp-{owner}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        if exists:
            trash = os.path.join(parent, f".{name}.old-{owner}-{uuid.uuid4().hex[:8]}")
            os.rename(path, trash)
            os.rename(tmp, path)
            _remove(trash)
        else:
            os.rename(tmp, path)
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)
    return path


def remove_stale_temporaries(parent: str, name: str) -> None:
    """Delete what writers on this host that were killed before they could clean up left
    beside ``name`` (a SIGKILLed fit would otherwise leave a store-sized folder per kill):
    their ``.NAME.tmp-HOST-PID-*`` entries, and their ``.NAME.old-HOST-PID-*`` entries
    while ``NAME`` exists (without it, the old one is the only copy of the output)."""
    host = socket.gethostname()
    published = os.path.exists(os.path.join(parent, name))
    for entry in os.listdir(parent):
        for kind in ("tmp", "old"):
            prefix = f".{name}.{kind}-"
            if not entry.startswith(prefix) or (kind == "old" and not published):
                continue
            owner = entry[len(prefix):].rsplit("-", 2)
            if len(owner) == 3 and owner[0] == host and owner[1].isdigit() and not _alive(int(owner[1])):
                _remove(os.path.join(parent, entry))


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
