"""Errors raised when weights cannot be had or do not fit, with what was looked for and what to do."""
import contextlib
import pickle
from typing import Iterator

from gczoo.errors import CheckpointError, PretrainedWeightsError

from .sources import download_error_types
from .weights import unpickling_refused

__all__ = ['CheckpointError', 'PretrainedWeightsError', 'download_error_types', 'explain_download_errors']


@contextlib.contextmanager
def explain_download_errors(variant: str, enabled: bool = True) -> Iterator[None]:
    """Turn a failed weight download into one ``PretrainedWeightsError`` saying where to get weights, and a
    pickle timm refused to read into gczoo's ``CheckpointError`` (which never offers to unpickle it)."""
    if not enabled:
        yield
        return
    try:
        yield
    except RuntimeError as e:  # timm read the file itself and weights_only refused it
        if not isinstance(e.__cause__, pickle.UnpicklingError):
            raise
        raise unpickling_refused(e.__cause__, source=f'the pretrained weights of {variant!r}') from e
    except download_error_types() as e:
        raise PretrainedWeightsError(
            f'Could not load pretrained weights for {variant!r}: {type(e).__name__}: {e}. '
            f'If you are offline, set HF_HUB_OFFLINE=1 with the weights in your Hub cache (HF_HOME), '
            f'load a folder with timm.create_model("local-dir:DIR"), pass '
            f'pretrained_cfg_overlay=dict(file="model.safetensors"), or train weights with scripts/train.sh.'
        ) from e
