"""The numbers a card states that are measured, not written by hand: complexity (``gczoo complexity``,
saved in ``model_cards/complexity.json``) and accuracy (``gczoo eval`` results), checked on the way in."""
import json
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Union

from gczoo.complexity import BASELINE_MODEL, count_complexity
from gczoo.models import ZOO_MODELS
from gczoo.models.registry import resolve_model_name

__all__ = [
    'DEFAULT_CARDS_DIR', 'COMPLEXITY_FILE', 'RESULTS_FILE', 'IMG_SIZE', 'METRICS', 'zoo_row', 'load_complexity',
    'complexity_of', 'check_metrics', 'has_accuracy', 'load_results',
]

DEFAULT_CARDS_DIR = Path(__file__).resolve().parents[2] / 'model_cards'
COMPLEXITY_FILE = 'complexity.json'
RESULTS_FILE = 'results.json'
IMG_SIZE = 224
METRICS = ('top1', 'top5')  # the measured numbers a card may state


def zoo_row(model_name: str) -> Any:
    """The ``ZOO_MODELS`` row of ``model_name``; an unknown name is a ``UsageError`` listing the zoo."""
    return ZOO_MODELS[resolve_model_name(model_name, what='model', zoo=ZOO_MODELS, folders=False).architecture]


def load_complexity(path: Optional[Union[str, Path]] = None) -> Dict[str, Dict[str, Any]]:
    """``{model: count_complexity row}`` from ``model_cards/complexity.json`` (``{}`` if there is none)."""
    path = Path(path) if path is not None else DEFAULT_CARDS_DIR / COMPLEXITY_FILE
    if not path.is_file():
        return {}
    try:
        payload = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f'complexity file {str(path)!r} is not valid JSON: {e}') from e
    models = payload.get('models') if isinstance(payload, dict) else None
    if not isinstance(models, dict):
        raise ValueError(f'complexity file {str(path)!r} has no "models" object (write it with `gczoo cards`)')
    return models


def complexity_of(model_name: str, complexity: Optional[Mapping[str, Mapping[str, Any]]]) -> Dict[str, Any]:
    """The model's row of ``complexity`` (default: the committed file), measured now if it has none."""
    table = dict(complexity) if complexity is not None else load_complexity()
    row = dict(table[model_name]) if model_name in table else count_complexity(model_name, IMG_SIZE)
    if 'gmacs_vs_resnet50' not in row:
        base = table.get(BASELINE_MODEL) or count_complexity(BASELINE_MODEL, IMG_SIZE)
        row['gmacs_vs_resnet50'] = row['gmacs'] / base['gmacs']
    return row


def check_metrics(results: Optional[Mapping[str, Any]], where: str) -> None:
    """Refuse measured metrics that are not finite numbers (a card never states NaN accuracy)."""
    for key in METRICS:
        value = (results or {}).get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f'{where}: {key} is {value!r}, not a finite number; a card states only measured '
                             f'accuracy: re-run `gczoo eval` and pass its JSON')


def has_accuracy(model_name: str, results: Optional[Mapping[str, Any]]) -> bool:
    """Whether ``results`` hold a measured top-1 (checked: a non-finite one is a ``ValueError``)."""
    check_metrics(results, f'results for {model_name}')
    return bool(results) and results.get('top1') is not None


def _result_model(entry: Mapping[str, Any]) -> Optional[str]:
    """Which zoo model an eval result is for: its ``architecture``, else its ``model`` name."""
    for key in ('architecture', 'model'):
        name = entry.get(key)
        if isinstance(name, str):
            name = name.split(':')[-1].split('/')[-1].split('.')[0]
            if name in ZOO_MODELS:
                return name
    return None


def load_results(paths: Iterable[Union[str, Path]]) -> Dict[str, Dict[str, Any]]:
    """Measured results by zoo model, from JSON files: ``gczoo eval`` outputs (one result each, or a
    list of them) or an object ``{model: {top1, top5, dataset, command, ...}}``. Later files win."""
    out: Dict[str, Dict[str, Any]] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f'results file {str(path)!r} does not exist')
        try:
            payload = json.loads(path.read_text())
        except ValueError as e:
            raise ValueError(f'results file {str(path)!r} is not valid JSON: {e}') from e
        entries: List[Mapping[str, Any]]
        if isinstance(payload, list):
            entries = payload
        elif isinstance(payload, dict) and 'top1' in payload:
            entries = [payload]
        elif isinstance(payload, dict):
            entries = [dict(v, model=k) for k, v in payload.items() if isinstance(v, dict)]
        else:
            raise ValueError(f'results file {str(path)!r} must hold a result object, a list of them, or {{model: result}}')
        for entry in entries:
            name = _result_model(entry)
            if name is None:
                raise ValueError(f'results file {str(path)!r}: cannot tell which gczoo model {entry.get("model")!r} is')
            check_metrics(entry, f'results file {str(path)!r}, {name}')
            out[name] = dict(entry)
    return out
