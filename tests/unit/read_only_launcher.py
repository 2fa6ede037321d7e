"""Run ``python -m MODULE ARGS`` as under ``readOnlyRootFilesystem``: writes outside emptyDirs fail.

Used by test_cluster_read_only.py as ``python read_only_launcher.py MODULE ARGS...``. An audit
hook (PEP 578) answers every file write Python makes (``open`` for writing, ``os.mkdir``,
``os.remove``, ``os.rename``...) outside ``RO_WRITABLE`` (the emptyDir mounts, ``:``-separated)
with ``EROFS``, as the kernel answers a write to a read-only mount; ``/dev`` stays writable, as
in a container. Each refused path is appended to ``RO_REFUSED_LOG``.
"""

from __future__ import annotations

import errno
import os
import runpy
import sys

WRITABLE = tuple(os.path.realpath(p) for p in os.environ.pop("RO_WRITABLE").split(os.pathsep))
REFUSED_LOG = os.open(os.environ.pop("RO_REFUSED_LOG"), os.O_WRONLY | os.O_APPEND)
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# Audit events that change the filesystem; their first argument is the path (rename: also dst).
CHANGES = {
    "os.mkdir", "os.remove", "os.rmdir", "os.rename", "os.symlink", "os.link", "os.truncate",
    "os.chmod", "os.chown", "os.utime", "os.mkfifo", "os.mknod", "os.removexattr",
    "os.setxattr",
}  # fmt: skip


def _allowed(path: object) -> bool:
    if isinstance(path, int) or path is None:  # an open file descriptor: checked when opened
        return True
    real = os.path.realpath(os.fsdecode(path))  # type: ignore[arg-type]
    return real.startswith("/dev/") or any(
        real == root or real.startswith(root + os.sep) for root in WRITABLE
    )


def _refuse(path: object) -> None:
    os.write(REFUSED_LOG, f"{os.fsdecode(path)}\n".encode())  # type: ignore[arg-type]
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))  # type: ignore[arg-type]


def _hook(event: str, args: tuple) -> None:
    if event == "open":
        path, mode, flags = args
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool(
            (flags or 0) & WRITE_FLAGS
        )
        if writes and not _allowed(path):
            _refuse(path)
    elif event in CHANGES:
        # rename changes both paths; link and symlink only the new name (the second).
        paths = {"os.rename": args[:2], "os.link": args[1:2], "os.symlink": args[1:2]}
        for path in paths.get(event, args[:1]):
            if not _allowed(path):
                _refuse(path)


if __name__ == "__main__":
    module, *arguments = sys.argv[1:]
    sys.addaudithook(_hook)
    sys.argv = [module, *arguments]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
