"""Publishing weights to the Hugging Face Hub: a training output -> a checked Hub folder -> an upload.

A Hub repository of gczoo weights holds exactly the three files ``gczoo.models.hub_folder`` describes:
``model.safetensors``, ``config.json`` in timm's format, and ``README.md``, the model card with the
measured results (``gczoo.cards.render_model_card``) and Hub metadata saying where the weights come
from (``base_model``, ``datasets``).

Loading such a folder back (``local-dir:``, ``hf-hub:``, the checks around ``timm.create_model``) is
``gczoo.models.hub_folder``'s job; its names are re-exported here. The Hub cache is
huggingface_hub's alone: it fills it when it downloads (``hf download REPO`` on a connected machine,
then copy ``HF_HOME``), and an air-gapped copy of a folder loads with ``local-dir:DIR``.

Why not timm's ``push_to_hf_hub`` as a whole: it writes ``pytorch_model.bin`` next to the
safetensors file unless ``safe_serialization=True``, writes its own generic README only when the
repo has none (so a re-published card with new results would never reach the Hub), and works in
a temporary folder, so there is nothing to inspect before uploading (``--dry-run``). ``publish``
therefore uses its two halves: timm's ``save_for_hf(..., safe_serialization=True)`` for the
weights and config, and ``huggingface_hub.HfApi`` ``create_repo`` + ``upload_folder`` for the upload.
"""
import dataclasses
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import timm
import torch.nn as nn
from huggingface_hub import HfApi
from huggingface_hub.utils import validate_repo_id
from timm.data import resolve_data_config

from gczoo.args import ArgumentParser
from gczoo.cards import render_model_card, source_metadata
from gczoo.errors import GczooError
from gczoo.files import staged_folder
from gczoo.models import HUB_ORG, CheckpointError, read_checkpoint
from gczoo.models.errors import download_error_types
from gczoo.models.factory import create_model  # noqa: F401  (re-exported, as the names below)
from gczoo.models.hub_folder import (  # noqa: F401  (re-exported: the loading half of the Hub layout)
    CONFIG_NAME, WEIGHTS_NAME, check_hub_folder, export_metadata, load_pretrained_weights, read_weights_shapes,
    save_pretrained, verify_weights,
)
from gczoo.models.registry import resolve_model_name
from gczoo.train import ARGS_FILE, BEST_CHECKPOINT, EXPORT_DIR, LAST_CHECKPOINT, RESULTS_FILE  # the run's file names

__all__ = [
    'WEIGHTS_NAME', 'CONFIG_NAME', 'CARD_NAME', 'HUB_FILES', 'save_pretrained', 'read_weights_shapes',
    'verify_weights', 'load_pretrained_weights', 'check_hub_folder', 'create_model', 'TrainedWeights',
    'load_training_output', 'card_results', 'card_origin', 'default_repo_id', 'write_hub_folder',
    'upload_hub_folder', 'PublishResult', 'publish', 'main',
]

PathLike = Union[str, os.PathLike]
CARD_NAME = 'README.md'
HUB_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)

# checkpoint file names looked for in a training output folder, best first
_CHECKPOINT_NAMES = (BEST_CHECKPOINT, 'best.pth.tar', 'best.pth', 'checkpoint_best.pth', 'model_best.pth',
                     LAST_CHECKPOINT, 'last.pth', 'checkpoint_last.pth', 'checkpoint.pth.tar', 'checkpoint.pth')
_DATA_ARG_KEYS = ('input_size', 'img_size', 'in_chans', 'crop_pct', 'crop_mode', 'interpolation', 'mean', 'std')


@dataclasses.dataclass
class TrainedWeights:
    """A trained model and what was measured with it, ready to be written as a Hub folder."""
    model: nn.Module
    model_name: str
    data_config: Dict[str, Any]
    label_names: Optional[List[str]]
    results: Dict[str, Any]
    args: Dict[str, Any]
    source: str
    metadata: Dict[str, Any] = dataclasses.field(default_factory=dict)  # save_pretrained's origin and license


def _read_mapping(path: Path, what: str) -> Dict[str, Any]:
    """A JSON or (``.yaml``) YAML file holding a mapping; ``ValueError`` naming the file otherwise."""
    import yaml  # timm's own dependency
    try:
        text = path.read_text()
        value = yaml.safe_load(text) if path.suffix in ('.yaml', '.yml') else json.loads(text)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise ValueError(f'{what} {str(path)!r} is not readable {path.suffix.lstrip(".").upper() or "JSON"}: '
                         f'{" ".join(str(e).split())}') from e
    if not isinstance(value, dict):
        raise ValueError(f'{what} {str(path)!r} must hold a mapping, got {type(value).__name__}')
    return value


def _read_label_names(path: PathLike) -> List[str]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f'label_names file {str(path)!r} does not exist')
    text = path.read_text()
    if path.suffix == '.json':
        names = json.loads(text)
        if isinstance(names, dict):  # {"0": "cat", ...}
            names = [names[k] for k in sorted(names, key=int)]
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f'label_names file {str(path)!r} must hold one name per line or a JSON list of strings')
    return names


def _checkpoint_args(path: Path) -> Dict[str, Any]:
    """The ``args`` a training checkpoint carries, if it can be read without unpickling code."""
    try:
        obj = read_checkpoint(path)
    except CheckpointError:  # args stored as an argparse.Namespace need unpickling: use args.json instead
        return {}
    args = obj.get('args')
    return dict(args) if isinstance(args, Mapping) else {}


def load_training_output(
        source: PathLike,
        *,
        model_name: Optional[str] = None,
        checkpoint: Optional[PathLike] = None,
        label_names: Optional[Sequence[str]] = None,
        results: Optional[Mapping[str, Any]] = None,
) -> TrainedWeights:
    """Read what ``gczoo train`` wrote to OUT (or a lone checkpoint file) into a ``TrainedWeights``.

    From a training output folder: ``OUT/export/{model.safetensors,config.json}`` (the best model,
    with its data config and label names) unless ``checkpoint`` names another file (e.g.
    ``OUT/last.pth.tar``); ``OUT/results.json`` (``best``/``final`` top-1/top-5, ``class_names``,
    ``args``) for the card; ``OUT/args.yaml`` (``args.json``), or else results.json's or the checkpoint's ``args``.
    From a checkpoint file (``.safetensors``, or ``.pth``/``.pth.tar`` read with
    ``torch.load(weights_only=True)``, EMA weights preferred as in gczoo train's export):
    ``model_name`` or the args' ``model`` gives the architecture, the classifier's shape the class
    count, and the args (``img_size``, ``crop_pct``, ``mean``, ...) the data config.
    """
    source = Path(source)
    if not source.exists():
        raise ValueError(f'source {str(source)!r} does not exist; pass a training output folder (OUT) '
                         f'or a checkpoint file')
    out_dir = source if source.is_dir() else source.parent
    ckpt = Path(checkpoint) if checkpoint is not None else (None if source.is_dir() else source)
    results, args = _read_run(out_dir, results)
    if label_names is None and isinstance(results.get('class_names'), list):
        label_names = [str(n) for n in results['class_names']]
    if ckpt is None and (out_dir / EXPORT_DIR / WEIGHTS_NAME).is_file():
        return _from_export(out_dir, model_name, label_names, results, args)
    return _from_checkpoint(_find_checkpoint(out_dir, ckpt), model_name, label_names, results, args)


def _read_run(out_dir: Path, results: Optional[Mapping[str, Any]]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """A run's results (``results.json`` unless given) and args (``args.yaml``/``args.json``/results' ``args``)."""
    if results is None:
        results = _read_mapping(out_dir / RESULTS_FILE, 'results') if (out_dir / RESULTS_FILE).is_file() else {}
    results = dict(results)
    args: Dict[str, Any] = {}
    if (out_dir / ARGS_FILE).is_file():  # what gczoo train (and timm's train.py) write to every run
        args = _read_mapping(out_dir / ARGS_FILE, 'training args')
    elif (out_dir / 'args.json').is_file():
        args = _read_mapping(out_dir / 'args.json', 'training args')
    elif isinstance(results.get('args'), Mapping):  # gczoo train keeps its args in results.json
        args = dict(results['args'])
    return results, args


def _from_export(out_dir: Path, model_name: Optional[str], label_names: Optional[Sequence[str]],
                 results: Dict[str, Any], args: Dict[str, Any]) -> TrainedWeights:
    export = out_dir / EXPORT_DIR
    model = create_model(f'local-dir:{export}', pretrained=True)
    cfg = model.pretrained_cfg
    name = cfg['architecture']
    if model_name is not None and model_name != name:
        raise ValueError(f'--model {model_name!r} disagrees with the export\'s architecture {name!r} ({export})')
    data_keys = _DATA_ARG_KEYS + ('test_input_size', 'test_crop_pct')
    data_config = {k: cfg[k] for k in data_keys if cfg.get(k) is not None}
    labels = (list(label_names) if label_names is not None else list(cfg.get('label_names') or [])) or None
    origin = (cfg.get('notes') or [f'weights of {out_dir.name}/export'])[0]  # what the export said of them
    metadata = {'origin': origin, 'license': cfg.get('license')}
    return TrainedWeights(model, name, data_config, labels, results, args, str(export), metadata)


def _find_checkpoint(out_dir: Path, ckpt: Optional[Path]) -> Path:
    if ckpt is None:
        found = [out_dir / n for n in _CHECKPOINT_NAMES if (out_dir / n).is_file()]
        if not found:
            raise CheckpointError(
                f'{str(out_dir)!r} has no export/{WEIGHTS_NAME} and no checkpoint (looked for '
                f'{", ".join(_CHECKPOINT_NAMES)}); pass the checkpoint file with --checkpoint')
        ckpt = found[0]
    if not ckpt.is_file():
        raise CheckpointError(f'checkpoint file {str(ckpt)!r} does not exist')
    return ckpt


def _from_checkpoint(ckpt: Path, model_name: Optional[str], label_names: Optional[Sequence[str]],
                     results: Dict[str, Any], args: Dict[str, Any]) -> TrainedWeights:
    if not args and ckpt.suffix != '.safetensors':
        args = _checkpoint_args(ckpt)
    name = model_name or args.get('model')
    if not name:
        raise ValueError(f'which model are the weights in {str(ckpt)!r} for? Pass --model NAME '
                         f'(no args.json or checkpoint args with "model" were found)')
    resolve_model_name(name, what='--model', folders=False)
    arch_args = {k: args[k] for k in ('in_chans', 'global_pool') if args.get(k) is not None}
    # safetensors, or weights_only=True; EMA weights first; num_classes from the checkpoint's classifier
    model = create_model(name, checkpoint_path=ckpt, checkpoint_what='checkpoint', **arch_args)
    data_args = {k: args[k] for k in _DATA_ARG_KEYS if args.get(k) not in (None, '', [])}  # '' = model default
    data_config = resolve_data_config(data_args, model=model)
    labels = list(label_names) if label_names is not None else None
    metadata = export_metadata(args, model.pretrained_cfg) if args.get('model') else \
        {'origin': f'weights from the checkpoint {ckpt.name}'}
    return TrainedWeights(model, name, data_config, labels, results, args, str(ckpt), metadata)


def default_repo_id(model_name: str, tag: str) -> str:
    """``{HUB_ORG}/{model}.{tag}``: one repo per model and training recipe, as timm names its weights."""
    if not tag or not all(c.isalnum() or c in '_-' for c in tag):
        raise ValueError(f'tag must be a non-empty name of letters, digits, "_" and "-" (e.g. "ft_in1k"), got {tag!r}')
    return f'{HUB_ORG}/{model_name}.{tag}'


def _without_paths(text: str) -> str:
    # a public card should not show where the data sat on the training machine
    return re.sub(r'\s*(?:at\s+)?\(?(?:/|[A-Za-z]:\\)[^\s)]*\)?', '', text).strip()


def card_results(weights: TrainedWeights) -> Dict[str, Any]:
    """The measured numbers in ``gczoo.cards``' form (``top1``, ``top5``, ``dataset``, ``img_size``,
    ``crop_pct``, ``count``): a ``gczoo eval`` result is used as is; a ``gczoo train`` results.json
    gives its ``best`` epoch, the one the export holds."""
    results = weights.results
    if isinstance(results.get('top1'), (int, float)):
        return dict(results)
    best = results.get('best') if isinstance(results.get('best'), Mapping) else {}
    if not isinstance(best.get('top1'), (int, float)):
        return {}
    out: Dict[str, Any] = {'top1': float(best['top1'])}
    if isinstance(best.get('top5'), (int, float)):
        out['top5'] = float(best['top5'])
    dataset = results.get('dataset') or results.get('data')
    if isinstance(dataset, str) and dataset:
        out['dataset'] = _without_paths(dataset)
    input_size = weights.data_config.get('input_size')
    if input_size:
        out['img_size'] = int(input_size[-1])
    if weights.data_config.get('crop_pct') is not None:
        out['crop_pct'] = weights.data_config['crop_pct']
    if isinstance(results.get('val_images'), int):
        out['count'] = results['val_images']
    return out


def _repo_section(weights: TrainedWeights, repo_id: str, tag: str) -> str:
    """What this repository holds and how to load it (the zoo card describes the architecture)."""
    cfg = weights.data_config
    best = weights.results.get('best') if isinstance(weights.results.get('best'), Mapping) else {}
    final = weights.results.get('final') if isinstance(weights.results.get('final'), Mapping) else {}
    lines = [f'## Weights in this repository: `{repo_id}`', '']
    origin = weights.metadata.get('origin')  # what the weights are, as config.json's pretrained_cfg says
    facts = [f'- **Recipe tag:** `{tag}`' + (f' ({origin})' if origin else ''),
             f'- **Classes:** {weights.model.num_classes}'
             + (f' (`label_names` in config.json)' if weights.label_names else '')]
    if cfg.get('input_size'):
        facts.append(f'- **Preprocessing:** input {tuple(cfg["input_size"])}, crop_pct {cfg.get("crop_pct")}, '
                     f'{cfg.get("interpolation")} interpolation, mean {tuple(cfg.get("mean", ()))}, '
                     f'std {tuple(cfg.get("std", ()))} (pretrained_cfg in config.json)')
    if isinstance(best.get('top1'), (int, float)):
        epochs = weights.results.get('epochs')
        facts.append(f'- **Checkpoint:** best validation epoch {best.get("epoch")} (counted from 0, as in '
                     f'summary.csv' + (f', of {epochs} epochs' if epochs else '') + f'): top-1 {best["top1"]:.2f}'
                     + (f', top-5 {best["top5"]:.2f}' if isinstance(best.get('top5'), (int, float)) else ''))
    if isinstance(final.get('top1'), (int, float)) and final.get('epoch') != best.get('epoch'):
        facts.append(f'- **Last epoch ({final.get("epoch")}):** top-1 {final["top1"]:.2f}'
                     + (f', top-5 {final["top5"]:.2f}' if isinstance(final.get('top5'), (int, float)) else ''))
    facts.append(f'- **Files:** `{WEIGHTS_NAME}` (safetensors only, no pickle), `{CONFIG_NAME}` (timm format)')
    lines += facts
    lines += ['', '```python', 'import timm', 'import gczoo  # registers the gczoo models with timm', '',
              f"model = timm.create_model('hf-hub:{repo_id}', pretrained=True).eval()",
              'data_config = timm.data.resolve_model_data_config(model)',
              'transform = timm.data.create_transform(**data_config, is_training=False)', '```', '',
              f'Offline: `HF_HUB_OFFLINE=1` with the repo in the Hub cache (`hf download {repo_id}`), or '
              f"`timm.create_model('local-dir:DIR', pretrained=True)` on a downloaded copy of this folder.", '',
              f"transformers: `import gczoo` first, then `AutoModelForImageClassification.from_pretrained("
              f"'{repo_id}')`; without it transformers says the architecture is not supported by your timm "
              "(upgrading timm does not help).",
              '']
    return '\n'.join(lines)


# timm dataset prefixes whose name is a Hub dataset id (hfds/hfids: the Hub; torch/tfds: the same names)
_DATASET_PREFIXES = ('hfds/', 'hfids/', 'torch/', 'tfds/')


def card_origin(weights: TrainedWeights) -> Tuple[Optional[str], List[str]]:
    """``(base_model, datasets)`` for the card's Hub metadata, from what the training run says it used:
    the pretrained weights it started from (``--pretrained-backbone`` as a timm name with tag, or the
    model's own ``--pretrained`` tag) and the Hub ids of its own data (``--dataset hfds/NAME`` and the
    like). A local folder or file has no Hub id, so it is not named; nothing known gives ``(None, [])``."""
    args = weights.args
    base_model: Optional[str] = None
    datasets: List[str] = []
    start = args.get('pretrained_backbone')
    if not (isinstance(start, str) and timm.is_model(start)) and args.get('pretrained'):
        start = weights.model_name
    if isinstance(start, str) and timm.is_model(start):
        base_model, datasets = source_metadata(start)
    dataset = args.get('dataset')
    if isinstance(dataset, str) and dataset.startswith(_DATASET_PREFIXES):
        datasets.append(dataset.split('/', 1)[1])
    return base_model, list(dict.fromkeys(datasets))


def _render_card(weights: TrainedWeights, repo_id: str, tag: str) -> str:
    """The zoo's model card (``gczoo.cards``) with the measured results, plus this repo's section."""
    base_model, datasets = card_origin(weights)
    card = render_model_card(weights.model_name, card_results(weights), base_model=base_model, datasets=datasets)
    section = _repo_section(weights, repo_id, tag)
    head, sep, tail = card.partition('\n## Usage')
    return f'{head}\n{section}{sep}{tail}' if sep else f'{card}\n{section}'


def write_hub_folder(
        weights: TrainedWeights,
        out_dir: PathLike,
        *,
        repo_id: str,
        tag: str,
) -> List[Path]:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` to ``out_dir`` and check them.

    ``out_dir`` must be empty or hold only these files (they are replaced), so what is written is
    exactly what will be uploaded. The three files are written and checked in a hidden folder next to
    ``out_dir`` and moved into place together, so a failure (a full disk) leaves none of them.
    Returns the three paths.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f'local_dir {str(out)!r} exists and is not a folder')
    if out.is_dir():
        extra = sorted(p.name for p in out.iterdir() if p.name not in HUB_FILES)
        if extra:
            raise ValueError(f'local_dir {str(out)!r} already holds other files ({", ".join(extra)}); '
                             f'use an empty folder so that it holds exactly what is uploaded')
    card = _render_card(weights, repo_id, tag)  # before anything is written: a bad result fails here
    with staged_folder(out, merge=True) as staging:  # an OSError names the file asked for, not its staging copy
        save_pretrained(weights.model, staging, data_config=weights.data_config, label_names=weights.label_names,
                        tag=tag, **weights.metadata)
        (staging / CARD_NAME).write_text(card, encoding='utf-8')
        check_hub_folder(staging)
    return [out / name for name in HUB_FILES]


def upload_hub_folder(
        folder: PathLike,
        repo_id: str,
        *,
        commit_message: str,
        private: bool = False,
        revision: Optional[str] = None,
        create_pr: bool = False,
        token: Optional[str] = None,
) -> Any:
    """Create ``repo_id`` if needed and upload the folder's three Hub files in one commit.

    The token comes from ``token``, else huggingface_hub's usual sources (``HF_TOKEN``, ``hf auth
    login``). The folder is checked first (:func:`check_hub_folder`), and only ``HUB_FILES`` are
    uploaded, so no pickle can reach the repo. Returns huggingface_hub's ``CommitInfo``.
    """
    folder = Path(folder)
    check_hub_folder(folder)
    missing = [name for name in HUB_FILES if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f'{str(folder)!r} lacks {", ".join(missing)}; write it with `gczoo publish --dry-run`')
    api = HfApi(token=token)
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type='model')
        repo_id = getattr(repo_url, 'repo_id', None) or repo_id  # the Hub may complete an implicit owner
        return api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), repo_type='model', revision=revision, create_pr=create_pr,
            commit_message=commit_message, allow_patterns=list(HUB_FILES))
    except download_error_types() as e:  # the Hub refused, or could not be reached
        first_line = str(e).splitlines()[0] if str(e) else ''
        raise GczooError(
            f'upload failed: {type(e).__name__}: {first_line}. Check the repo id {repo_id!r}, your write access '
            f'and token (HF_TOKEN or `hf auth login`), and that the Hub is reachable; the folder {str(folder)!r} '
            f'is complete, so `hf upload {repo_id} {folder}` also works.') from e


def _default_commit_message(model_name: str, tag: str, results: Mapping[str, Any]) -> str:
    best = results.get('best') if isinstance(results.get('best'), Mapping) else results
    top1 = best.get('top1') if isinstance(best, Mapping) else None
    measured = f' (top-1 {float(top1):.2f}%)' if isinstance(top1, (int, float)) else ''
    return f'Publish {model_name}.{tag} weights{measured} with gczoo'


@dataclasses.dataclass
class PublishResult:
    repo_id: str
    folder: Path
    files: List[Path]
    commit: Any = None  # huggingface_hub CommitInfo after an upload; None for a dry run


def publish(
        source: PathLike,
        *,
        model_name: Optional[str] = None,
        tag: Optional[str] = None,
        repo_id: Optional[str] = None,
        checkpoint: Optional[PathLike] = None,
        label_names: Optional[Sequence[str]] = None,
        results: Optional[Mapping[str, Any]] = None,
        local_dir: Optional[PathLike] = None,
        dry_run: bool = False,
        private: bool = False,
        revision: Optional[str] = None,
        create_pr: bool = False,
        commit_message: Optional[str] = None,
        token: Optional[str] = None,
) -> PublishResult:
    """Write the Hub folder for a training output (or checkpoint) and, unless ``dry_run``, upload it.

    ``repo_id`` defaults to ``{HUB_ORG}/{model}.{tag}``; one of them is required. The folder goes to
    ``local_dir`` (default: a temporary folder for an upload, ``OUT/hub/<repo name>`` for a dry run).
    """
    if tag is None and repo_id is None:
        raise ValueError(f'pass tag (the training recipe, e.g. "ft_in1k": repo {HUB_ORG}/MODEL.TAG) or repo_id')
    weights = load_training_output(source, model_name=model_name, checkpoint=checkpoint,
                                   label_names=label_names, results=results)
    if tag is None:
        tag = repo_id.split('/')[-1].rpartition('.')[2] or 'main'
    repo_id = repo_id or default_repo_id(weights.model_name, tag)
    validate_repo_id(repo_id)
    message = commit_message or _default_commit_message(weights.model_name, tag, weights.results)

    if dry_run or local_dir is not None:
        base = Path(source) if Path(source).is_dir() else Path(source).parent
        folder = Path(local_dir) if local_dir is not None else base / 'hub' / repo_id.split('/')[-1]
        files = write_hub_folder(weights, folder, repo_id=repo_id, tag=tag)
        commit = None if dry_run else upload_hub_folder(
            folder, repo_id, commit_message=message, private=private, revision=revision, create_pr=create_pr,
            token=token)
        return PublishResult(repo_id, folder, files, commit)
    with tempfile.TemporaryDirectory(prefix='gczoo-publish-') as tmp:
        folder = Path(tmp) / repo_id.split('/')[-1]
        files = write_hub_folder(weights, folder, repo_id=repo_id, tag=tag)
        commit = upload_hub_folder(folder, repo_id, commit_message=message, private=private, revision=revision,
                                   create_pr=create_pr, token=token)
        return PublishResult(repo_id, folder, files, commit)


def _parser() -> ArgumentParser:
    p = ArgumentParser(
        prog='gczoo publish',
        description='Write a Hugging Face Hub repository folder (model.safetensors, config.json in timm\'s '
                    'format, README.md model card with the measured results) from a training output or a '
                    'checkpoint, and upload it. Token: HF_TOKEN or `hf auth login`.')
    p.add_argument('source', help='training output folder (OUT of gczoo train) or a checkpoint file')
    p.add_argument('--model', default=None, help='model name (needed for a checkpoint without args)')
    p.add_argument('--tag', default=None, help=f'training recipe tag; repo id {HUB_ORG}/MODEL.TAG')
    p.add_argument('--repo-id', default=None, help='full repo id ORG/NAME instead of the default')
    p.add_argument('--checkpoint', default=None, help='checkpoint inside OUT to publish instead of OUT/export')
    p.add_argument('--label-names', default=None, help='file with one class name per line, or a JSON list')
    p.add_argument('--results', default=None, help='JSON with the measured results (default OUT/results.json)')
    p.add_argument('--local-dir', default=None, help='write the repo folder here (default OUT/hub/NAME for --dry-run)')
    p.add_argument('--dry-run', action='store_true', help='write and check the folder, do not upload')
    p.add_argument('--private', action='store_true', help='create the repo as private')
    p.add_argument('--revision', default=None, help='branch to commit to (default main)')
    p.add_argument('--create-pr', action='store_true', help='open a pull request instead of committing')
    p.add_argument('--commit-message', default=None, help='commit message (default names model, tag, top-1)')
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """``gczoo publish``: see ``gczoo publish --help`` (errors are printed by ``gczoo.runner.run``)."""
    args = _parser().parse_args(argv)
    label_names = _read_label_names(args.label_names) if args.label_names else None
    results = _read_mapping(Path(args.results), 'results') if args.results else None
    result = publish(
        args.source, model_name=args.model, tag=args.tag, repo_id=args.repo_id, checkpoint=args.checkpoint,
        label_names=label_names, results=results, local_dir=args.local_dir, dry_run=args.dry_run,
        private=args.private, revision=args.revision, create_pr=args.create_pr, commit_message=args.commit_message)
    for path in result.files:
        if path.exists():  # an upload's temporary folder is gone by now
            size = path.stat().st_size
            print(f'{path}  ({size / 1e6:.1f} MB)' if size >= 100_000 else f'{path}  ({size / 1e3:.1f} kB)')
    if result.commit is None:
        print(f'dry run: wrote {result.folder} for {result.repo_id}; load it with '
              f'timm.create_model("local-dir:{result.folder}", pretrained=True)')
    else:
        url = getattr(result.commit, 'commit_url', None) or result.commit
        print(f'uploaded to {result.repo_id}: {url}\n'
              f'load it with timm.create_model("hf-hub:{result.repo_id}", pretrained=True)')
    return 0


if __name__ == '__main__':
    from gczoo.runner import run_main
    run_main(main, 'gczoo publish')
