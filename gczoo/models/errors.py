"""Errors raised when weights cannot be had or do not fit, with what was looked for and what to do
(re-exported here; the download explanations live in ``gczoo.models.sources``)."""
from gczoo.errors import CheckpointError, PretrainedWeightsError

from .sources import download_error_types, explain_download_errors

__all__ = ['CheckpointError', 'PretrainedWeightsError', 'download_error_types', 'explain_download_errors']
