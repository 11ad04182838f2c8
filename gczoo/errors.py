"""The errors gczoo raises on purpose: each message names what failed and what to do.

They sit below every other module (layers, models and jobs all raise them), and the command line
(``gczoo.cli.run``) prints any of them, or a ``ValueError``/``OSError``, as one line with exit 2.
"""

__all__ = ['GczooError', 'CheckpointError', 'PretrainedWeightsError', 'UsageError']


class GczooError(Exception):
    """Base of gczoo's own errors: a message meant for a person, shown by the CLI as one line."""


class CheckpointError(GczooError, ValueError):
    """A checkpoint is missing, corrupt, pickled where that is refused, holds wrong or non-finite values,
    or does not fit the model."""


class PretrainedWeightsError(GczooError, RuntimeError):
    """Pretrained weights were asked for but cannot be had; the message says which and what to do."""


class UsageError(GczooError, ValueError):
    """A command-line flag or argument is wrong (argparse's own errors become this, see ``gczoo.args``)."""
