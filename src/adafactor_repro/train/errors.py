"""The errors a user can fix, and how the entry points report them: one line naming the input and the fix,
no traceback. Anything else is a bug and keeps its traceback."""

from __future__ import annotations

import contextlib
import errno
import sys

from ..config import ConfigError
from ..data import DataError
from ..files import DirectoryLocked, DiskFullError, disk_full_message
from .checkpoint import CheckpointError

USER_ERRORS = (ConfigError, DataError, CheckpointError, DiskFullError, DirectoryLocked)


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


@contextlib.contextmanager
def exit_on_user_error(prog: str):
    """`with exit_on_user_error("train.py"): ...` exits with status 1 and `prog: error: <message>`."""
    try:
        yield
    except USER_ERRORS as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr, flush=True)
        sys.exit(1)
    except OSError as e:  # a full disk met outside the atomic writers (metrics.jsonl, data arrays, spm)
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"{prog}: error: {disk_full_message(e.filename or 'a file being written')}", file=sys.stderr,
              flush=True)
        sys.exit(1)
