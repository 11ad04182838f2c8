"""What the benchmarks print and write: Markdown ratio tables, target verdicts, CSV + JSON with the
environment they were measured in (written atomically: a run never leaves a half-written file)."""
import csv
import io
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch

from gczoo.files import atomic_write_text

__all__ = ['fmt', 'markdown', 'verdict', 'environment', 'write_outputs']


def fmt(value: Any, spec: str = '.2f') -> str:
    """A table cell: '-' for a missing value, floats with ``spec``."""
    if value is None:
        return '-'
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def markdown(lines: List[List[str]]) -> str:
    """A Markdown table from rows of cells, the first row being the header."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = ['| ' + ' | '.join(cell.ljust(w) for cell, w in zip(line, widths)) + ' |' for line in lines]
    out.insert(1, '|' + '|'.join('-' * (w + 2) for w in widths) + '|')
    return '\n'.join(out)


def verdict(row: Dict[str, Any]) -> str:
    """'met', 'met (within noise: ...)', 'MISSED: ...' or '' (no target) from ``judge_targets``' columns."""
    if row['targets_met'] is None:
        return ''
    if not row['targets_met']:
        return 'MISSED: ' + row['targets_missed']
    return 'met' + (f" (within noise: {row['targets_within_noise']})" if row['targets_within_noise'] else '')


def environment(device: str) -> Dict[str, Any]:
    """Versions, threads and the load average: what a figure needs to be read later."""
    import timm
    return dict(torch=torch.__version__, timm=timm.__version__, python=platform.python_version(),
                device=device, threads=torch.get_num_threads(), cpu_count=os.cpu_count(),
                load_average=list(os.getloadavg()), machine=platform.machine(),
                time=time.strftime('%Y-%m-%d %H:%M:%S'))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_outputs(rows: Sequence[Dict[str, Any]], extra: Dict[str, Any], out_dir: Path, stem: str) -> List[Path]:
    """``out_dir/stem.csv`` (one line per row) and ``out_dir/stem.json`` (``{'rows': [...], **extra}``)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else [])
    writer.writeheader()
    writer.writerows(rows)
    csv_path = atomic_write_text(out_dir / f'{stem}.csv', text.getvalue())
    json_path = atomic_write_text(out_dir / f'{stem}.json',
                                  json.dumps(_jsonable({'rows': list(rows), **extra}), indent=2) + '\n')
    return [csv_path, json_path]
