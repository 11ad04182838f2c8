"""The errors gczoo raises on purpose: each message names what failed and what to do.

They sit below every other module (layers, models and jobs all raise them), and the command line
(``gczoo.cli.run``) prints any of them, or a ``ValueError``/``OSError``, as one line with exit 2.
"""

import errno

__all__ = ['GczooError', 'CheckpointError', 'PretrainedWeightsError', 'UsageError', 'one_line']


class GczooError(Exception):
    """Base of gczoo's own errors: a message meant for a person, shown by the CLI as one line."""


class CheckpointError(GczooError, ValueError):
    """A checkpoint is missing, corrupt, pickled where that is refused, holds wrong or non-finite values,
    or does not fit the model."""


class PretrainedWeightsError(GczooError, LookupError):
    """Pretrained weights were asked for but cannot be had; the message says which and what to do.

    Not a ``RuntimeError``: timm's ``validate.py`` (``_try_run``) takes any ``RuntimeError`` for
    out-of-memory and retries it at smaller batch sizes, which cannot bring missing weights."""


class UsageError(GczooError, ValueError):
    """A command-line flag or argument is wrong (argparse's own errors become this, see ``gczoo.args``)."""


# what to do about an OSError, by errno: the OS says what failed, not how to go on
_OS_ADVICE = {
    errno.ENOSPC: 'free some disk space or write to another folder',
    errno.EDQUOT: 'free some disk space or write to another folder',
    errno.EACCES: 'check the permissions, or write to another folder',
    errno.EPERM: 'check the permissions, or write to another folder',
    errno.EROFS: 'the file system is read-only: write to another folder',
    errno.ENOENT: 'check the path',
    errno.ENOTDIR: 'check the path: a part of it is a file, not a folder',
    errno.EISDIR: 'a folder was given where a file is expected',
    errno.EEXIST: 'remove it or choose another name',
}


def one_line(error: BaseException) -> str:
    """The error's message on one line; for an error re-raised from a DataLoader worker, the worker's last
    line (its traceback is in the message); for an ``OSError``, what to do about its errno."""
    text = str(error)
    if 'Original Traceback' in text:  # torch's ExceptionWrapper
        lines = [line for line in text.strip().splitlines() if line.strip()]
        text = lines[-1].split(': ', 1)[-1] if lines else text
    if isinstance(error, OSError) and not isinstance(error, GczooError):
        advice = _OS_ADVICE.get(error.errno or -1)
        where = f': {error.filename!r}' if error.filename else ''
        if error.strerror:
            text = f'{error.strerror}{where}'
        text = f'{text} ({advice})' if advice else text
    text = ' '.join(text.split()) or type(error).__name__
    return text
