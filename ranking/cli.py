"""Shared helpers of the ranking CLIs: one-line ``error: ...`` messages (exit 2) instead of tracebacks.

Only errors caused by the user's input are turned into messages: missing or unreadable files,
malformed corpus / feedback / list files (their messages start with ``file:line:``), damaged index
or ranker folders and invalid settings. They are raised by the library as ``OSError``,
``ValueError`` (incl. :class:`~ranking.feedback.FeedbackFormatError`), ``KeyError`` or
:class:`~ranking.index.IndexCorruptError`; the CLIs wrap only their input-loading phases in
:func:`user_errors`, so a bug deeper down still shows its traceback.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import NoReturn

EXIT_USAGE = 2


def error_message(e: BaseException) -> str:
    """A one-line message for a user-input error."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    text = str(e) or type(e).__name__
    return text.replace("\n", "; ")


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


@contextlib.contextmanager
def user_errors(context: str | None = None) -> Iterator[None]:
    """Turn user-input errors raised inside the block into ``error: [context: ]message`` + exit 2."""
    from ranking.index import IndexCorruptError

    try:
        yield
    except (OSError, ValueError, KeyError, IndexCorruptError) as e:
        msg = error_message(e)
        fail(f"{context}: {msg}" if context else msg)
