"""Convert the official CBAM, BAM and GCNet checkpoints into gczoo safetensors.

The key layouts are the official model code's (read from it, not guessed):

* ``'cbam_official'`` -- Jongchan/attention-module ``MODELS/model_resnet.py`` with ``att_type='CBAM'``
  (their ResNet-50 + CBAM ImageNet checkpoint). Saved from ``nn.DataParallel`` as
  ``{'epoch', 'arch', 'state_dict', 'best_prec1', 'optimizer'}``; the ResNet keys are torchvision's
  (= timm's) and each bottleneck has ``layerS.B.cbam.ChannelGate.mlp.{1,3}.*`` and
  ``layerS.B.cbam.SpatialGate.spatial.{conv,bn}.*``. The official ``Bottleneck`` builds
  ``CBAM(planes * 4, 16)`` on the block's output (the first commit had ``CBAM(planes, 16)``, fixed
  before the checkpoints were released) and calls it after ``bn3``, before the residual add: timm's
  ``se`` slot. -> ``resnet50_cbam`` (``layerS.B.se.*``, renamed with ``gczoo.layers.cbam.OFFICIAL_KEY_MAP``).
* ``'bam_official'`` -- the same file with ``att_type='BAM'``: ``bam1``/``bam2``/``bam3`` on
  ``64/128/256 * expansion`` channels, applied after ``layer1``/``layer2``/``layer3``; inside each,
  ``channel_att.gate_c.{gate_c_fc_0, gate_c_bn_1, gate_c_fc_final}`` and
  ``spatial_att.gate_s.{gate_s_conv_reduce0, gate_s_bn_reduce0, gate_s_conv_di_{0,1}, gate_s_bn_di_{0,1},
  gate_s_conv_final}``. -> ``resnet50_bam``: ``bamN`` becomes ``layerN.attn{last block}`` (``layer1.attn2``,
  ``layer2.attn3``, ``layer3.attn5`` for ResNet-50), renamed with ``gczoo.layers.bam.OFFICIAL_KEY_MAP``.
* ``'gcnet_mmdet'`` -- GCNet's own code (xvjiarui/GCNet, mmdetection v1: ``Bottleneck.context_block``,
  called after ``norm3``, before the residual add) and mmdetection v2+ with
  ``plugins=[dict(cfg=dict(type='ContextBlock', ratio=1/16), stages=(False, True, True, True),
  position='after_conv3')]`` (mmcv's ``build_plugin_layer`` names the module ``ContextBlock._abbr_``
  + postfix = ``context_block``). The backbone keys are timm's (``conv1``, ``bn1``,
  ``layerS.B.{conv,bn}{1,2,3}``, ``downsample.{0,1}``) under ``backbone.``, the block's keys are
  mmcv's ``ContextBlock`` (``conv_mask``, ``channel_add_conv.{0,1,3}``) = gczoo's. Detector parts
  (``neck``, ``rpn_head``, ``roi_head``...) are dropped and reported. An mmpretrain
  ``ImageClassifier``'s ``head.fc`` becomes ``fc``. The depth comes from the number of blocks per
  stage, the ratio from the transform's width: ``resnet50_gc`` (r16), ``resnet50_gc_r4`` (r4),
  ``resnet101_gc``... mmdetection ResNets must be ``style='pytorch'`` (stride in the 3x3 conv, as
  timm; GCNet's configs all are): a ``'caffe'``-style backbone has the same keys but strides its
  first 1x1 conv, which no key reveals.
* ``'auto'`` -- detect the layout from the keys.

A detector checkpoint has no ImageNet classifier: the converted file holds the backbone only. Load it
with a new head of your size (``num_classes`` differs from the cfg's 1000, so timm drops the head and
loads the rest)::

    timm.create_model('resnet50_gc', pretrained=True, num_classes=K,
                      pretrained_cfg_overlay=dict(file='resnet50_gc_mmdet.safetensors'))

or ``timm.create_model('resnet50_gc', num_classes=K, pretrained_backbone=path)`` /
``gczoo.models.init_from_resnet(model, path)``, which check every backbone key. Files with a
classifier load strictly with ``pretrained=True, pretrained_cfg_overlay=dict(file=path)``.

Every converted state dict is compared with the target model's: missing, unexpected and mis-shaped
keys raise a ``CheckpointError`` that lists them by their names in the source checkpoint.
Checkpoints are read with ``torch.load(weights_only=True)`` only; a file that also pickles Python
objects (mmcv/mmengine ``meta``/``message_hub`` entries, numpy values) is refused with the names of
those objects and how to re-save its ``state_dict`` alone.
"""
import dataclasses
import functools
import json
import os
import re
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import timm
import torch
from safetensors.torch import save as safetensors_save

from gczoo.args import ArgumentParser
from gczoo.files import atomic_write, atomic_write_text
from gczoo.layers.bam import OFFICIAL_KEY_MAP as BAM_KEY_MAP
from gczoo.layers.cbam import OFFICIAL_KEY_MAP as CBAM_KEY_MAP

from .depths import DEPTHS, depth_of_layout
from .errors import CheckpointError
from .weights import compare_state_dicts, format_keys, read_state_dict, unwrap_state_dict

__all__ = [
    'LAYOUTS', 'ConversionReport', 'detect_layout', 'convert_state_dict', 'convert_checkpoint',
    'main',
]

StateDict = Dict[str, torch.Tensor]
PathLike = Union[str, os.PathLike]

LAYOUTS: Tuple[str, ...] = ('cbam_official', 'bam_official', 'gcnet_mmdet')

_BLOCK_KEY = re.compile(r'^layer([1-4])\.(\d+)\.')
_CBAM_KEY = re.compile(r'^(layer[1-4]\.\d+)\.cbam\.(.+)$')
_BAM_KEY = re.compile(r'^bam([1-3])\.(.+)$')
# mmcv names a plugin ``_abbr_ + postfix``; ContextBlock's abbreviation is 'context_block'
_GC_KEY = re.compile(r'^(layer[1-4]\.\d+)\.context_block[^.]*\.(.+)$')
_MMDET_PREFIX = 'backbone.'
_MMPRETRAIN_HEAD = 'head.fc.'


@dataclasses.dataclass
class ConversionReport:
    """What ``convert_checkpoint`` did."""
    layout: str
    model_name: str
    source: str
    output: Optional[str]
    num_tensors: int
    num_classes: int  # 0: backbone only (no classifier in the source)
    dropped: List[str]  # source keys that belong to no part of the model (detector neck/heads...)
    filled: List[str]  # target keys absent from the source, taken from the model (num_batches_tracked)
    notes: List[str]

    @property
    def load_snippet(self) -> str:
        """The call that loads the converted file."""
        path = self.output or 'converted.safetensors'
        if self.num_classes:
            return (f"timm.create_model({self.model_name!r}, pretrained=True, "
                    f"pretrained_cfg_overlay=dict(file={path!r}))")
        return (f"timm.create_model({self.model_name!r}, pretrained=True, num_classes=K, "
                f"pretrained_cfg_overlay=dict(file={path!r}))")

    def to_dict(self) -> Dict[str, Any]:
        return dict(dataclasses.asdict(self), load_snippet=self.load_snippet)

    def __str__(self) -> str:
        lines = [
            f'{self.source} ({self.layout}) -> {self.output or "(not written)"}: {self.model_name}, '
            f'{self.num_tensors} tensors, '
            + (f'classifier with {self.num_classes} classes' if self.num_classes else 'backbone only'),
        ]
        if self.dropped:
            groups = Counter(k.split('.', 1)[0] for k in self.dropped)
            lines.append('dropped (not part of the model): '
                         + ', '.join(f'{g}.* ({n})' for g, n in sorted(groups.items())))
        if self.filled:
            lines.append(f'filled from the model (absent from the source): {format_keys(self.filled)}')
        lines += self.notes
        lines.append(f'load with: {self.load_snippet}')
        return '\n'.join(lines)


def detect_layout(state_dict: Mapping[str, Any]) -> str:
    """Which of ``LAYOUTS`` a state dict (or a checkpoint holding one) is in, from its keys."""
    keys = list(_as_state_dict(state_dict))
    if any(_CBAM_KEY.match(k) for k in keys):
        return 'cbam_official'
    if any(_BAM_KEY.match(k) for k in keys):
        return 'bam_official'
    if any(k.startswith(_MMDET_PREFIX) for k in keys) or any(_GC_KEY.match(k) for k in keys):
        return 'gcnet_mmdet'
    hint = 'no attention keys at all'
    if any(re.match(r'^layer[1-4]\.(\d+\.se|attn\d+)\.', k) for k in keys):
        hint = ("it already has gczoo's keys ('.se.'/'.attnN.'): load it directly with "
                "pretrained_cfg_overlay=dict(file=...)")
    elif any(k.startswith('layer1.0.conv1.') for k in keys):
        hint = 'it looks like a plain ResNet: start a zoo model from it with gczoo.models.init_from_resnet'
    raise CheckpointError(
        f'could not recognise the checkpoint layout ({hint}). Looked for CBAM keys (layerS.B.cbam.*), '
        f'BAM keys (bam1.*-bam3.*) and mmdet/GCNet keys (backbone.* or layerS.B.context_block.*); '
        f'first keys: {format_keys(keys)}. Pass layout= one of {", ".join(LAYOUTS)} if it is one of them.')


def _as_state_dict(obj: Mapping[str, Any]) -> StateDict:
    if not isinstance(obj, Mapping):
        raise TypeError(f'state_dict must be a mapping of names to tensors, got {type(obj).__name__}')
    return unwrap_state_dict(obj, source='state_dict')


Renamed = Dict[str, Tuple[str, torch.Tensor]]  # new key -> (source key, tensor), in source order


def _put(out: Renamed, new_key: str, source_key: str, value: torch.Tensor) -> None:
    if new_key in out:
        raise CheckpointError(f'{source_key} and {out[new_key][0]} both map to {new_key} '
                              f'(two blocks of one kind in one residual block?): no zoo model has that')
    out[new_key] = (source_key, value)


def _rename_cbam(src: StateDict) -> Tuple[Renamed, List[str]]:
    out: Renamed = OrderedDict()
    for key, value in src.items():
        m = _CBAM_KEY.match(key)
        if m:
            # an unknown suffix stays under 'se.' and is reported as unexpected by its source name
            _put(out, f'{m.group(1)}.se.{CBAM_KEY_MAP.get(m.group(2), m.group(2))}', key, value)
        else:
            _put(out, key, key, value)
    return out, []


def _rename_bam(src: StateDict) -> Tuple[Renamed, List[str]]:
    last_block = _last_block_per_stage(src)
    out: Renamed = OrderedDict()
    for key, value in src.items():
        m = _BAM_KEY.match(key)
        if m:
            stage = int(m.group(1))
            if stage not in last_block:
                raise CheckpointError(f'{key}: the checkpoint has no layer{stage} blocks to put bam{stage} after')
            _put(out, f'layer{stage}.attn{last_block[stage]}.{BAM_KEY_MAP.get(m.group(2), m.group(2))}', key, value)
        else:
            _put(out, key, key, value)
    return out, []


def _rename_mmdet(src: StateDict) -> Tuple[Renamed, List[str]]:
    has_prefix = any(k.startswith(_MMDET_PREFIX) for k in src)
    out: Renamed = OrderedDict()
    dropped: List[str] = []
    for key, value in src.items():
        if key.startswith(_MMPRETRAIN_HEAD):
            _put(out, 'fc.' + key[len(_MMPRETRAIN_HEAD):], key, value)
            continue
        if has_prefix:
            if not key.startswith(_MMDET_PREFIX):
                dropped.append(key)  # neck, heads, EMA copies, data_preprocessor...
                continue
            inner = key[len(_MMDET_PREFIX):]
        else:
            inner = key
        m = _GC_KEY.match(inner)
        _put(out, f'{m.group(1)}.se.{m.group(2)}' if m else inner, key, value)
    return out, dropped


_RENAMERS = {'cbam_official': _rename_cbam, 'bam_official': _rename_bam, 'gcnet_mmdet': _rename_mmdet}


def _last_block_per_stage(keys: Mapping[str, Any]) -> Dict[int, int]:
    last: Dict[int, int] = {}
    for key in keys:
        m = _BLOCK_KEY.match(key)
        if m:
            stage, block = int(m.group(1)), int(m.group(2))
            last[stage] = max(last.get(stage, -1), block)
    return last


def _resnet_depth(keys: Mapping[str, Any]) -> int:
    last = _last_block_per_stage(keys)
    blocks = tuple(last.get(s, -1) + 1 for s in (1, 2, 3, 4))
    bottleneck = 'layer1.0.conv3.weight' in keys
    depth = depth_of_layout(bottleneck, blocks)
    if depth is None:
        raise CheckpointError(
            f'the checkpoint is not a standard ResNet of a depth the zoo builds: '
            f'{"bottleneck" if bottleneck else "basic"} blocks per stage {blocks}; the zoo\'s depths '
            f'(gczoo.models.depths): '
            + ', '.join(f'{d} = {"bottleneck" if row.bottleneck else "basic"} {row.layers}' for d, row in DEPTHS.items()))
    return depth


def _zoo_models() -> List[str]:
    """The zoo's models as timm has them registered (``module='gczoo'``): the zoo table itself imports
    this module (through its pretrained tags' load hook), so the names come from timm's registry."""
    return timm.list_models(module='gczoo')


def _infer_model(layout: str, renamed: Mapping[str, Tuple[str, torch.Tensor]]) -> str:
    depth = _resnet_depth(renamed)
    if layout == 'cbam_official':
        name, what = f'resnet{depth}_cbam', f'ResNet-{depth} + CBAM'
    elif layout == 'bam_official':
        name, what = f'resnet{depth}_bam', f'ResNet-{depth} + BAM'
    else:
        widths = {(v.shape[1], v.shape[0]) for k, (_, v) in renamed.items()
                  if k.endswith('.se.channel_add_conv.0.weight') and v.ndim == 4}
        if not widths:
            raise CheckpointError(
                'no ContextBlock with channel_add found (layerS.B.context_block.channel_add_conv.0.weight): '
                'gczoo has GC models with att pooling + channel_add only; pass model= to force a target')
        ratios = {round(c / p) for c, p in widths}
        if len(ratios) != 1:
            raise CheckpointError(f'the ContextBlocks use different ratios 1/{sorted(ratios)}; gczoo has no such model')
        ratio = ratios.pop()
        name = f'resnet{depth}_gc' + ('' if ratio == 16 else f'_r{ratio}')
        what = f'ResNet-{depth} + GC blocks (ratio 1/{ratio})'
    zoo_models = _zoo_models()
    if name not in zoo_models:
        raise CheckpointError(
            f'the checkpoint is a {what}; gczoo has no such model ({name!r}). Zoo models: '
            f'{", ".join(zoo_models)}. Pass model= to convert into one whose keys match.')
    return name


@functools.lru_cache(maxsize=8)
def _target_shapes(model_name: str, num_classes: int) -> Dict[str, Tuple[Tuple[int, ...], torch.dtype]]:
    """Key -> (shape, dtype) of a zoo model, built on the meta device (no memory, no init cost)."""
    with torch.device('meta'):
        model = timm.create_model(model_name, num_classes=num_classes)
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def _convert(
        state_dict: Mapping[str, Any], layout: str, model: Optional[str],
) -> Tuple[str, str, StateDict, List[str], List[str], int]:
    """-> (layout, model_name, converted, dropped, filled, num_classes)."""
    if not isinstance(layout, str) or layout not in LAYOUTS + ('auto',):
        raise ValueError(f'layout must be one of auto, {", ".join(LAYOUTS)}; got {layout!r}')
    if model is not None and model not in _zoo_models():
        raise ValueError(f'model must be a gczoo model name ({", ".join(_zoo_models())}); got {model!r}')
    src = _as_state_dict(state_dict)
    if layout == 'auto':
        layout = detect_layout(src)
    renamed, dropped = _RENAMERS[layout](src)
    model_name = model or _infer_model(layout, renamed)

    fc = renamed.get('fc.weight')
    num_classes = int(fc[1].shape[0]) if fc is not None and fc[1].ndim == 2 else 0
    target = _target_shapes(model_name, num_classes)

    def origin(key: str) -> str:
        old = renamed[key][0]
        return old if old == key else f'{old} (-> {key})'

    # BatchNorm's counter is absent from files saved before PyTorch 0.4.1 and never changes a result
    filled = [k for k in target if k not in renamed and k.endswith('num_batches_tracked')]
    mismatch = compare_state_dicts(
        {k: shape for k, (shape, _) in target.items()}, {k: t for k, (_, t) in renamed.items()}, describe=origin)
    if mismatch:
        hint = ''
        if model is not None:
            try:
                hint = f' Its keys point to {_infer_model(layout, renamed)!r}: drop model= to use it.'
            except CheckpointError:
                pass
        raise CheckpointError(
            f'the {layout} checkpoint does not fit {model_name}' + (' (backbone only)' if not num_classes else '')
            + f': {mismatch}.' + hint)
    converted: StateDict = OrderedDict()
    storages = set()
    for key in target:  # the model's own key order
        if key in filled:
            converted[key] = torch.zeros((), dtype=target[key][1])
            continue
        tensor = renamed[key][1].detach().contiguous()
        storage = tensor.untyped_storage()
        # safetensors refuses tensors that share memory: copy views and tied tensors, keep the rest
        if storage.data_ptr() in storages or storage.nbytes() != tensor.nbytes:
            tensor = tensor.clone()
        storages.add(tensor.untyped_storage().data_ptr())
        converted[key] = tensor
    return layout, model_name, converted, dropped, filled, num_classes


def convert_state_dict(
        state_dict: Mapping[str, Any],
        layout: str = 'auto',
        model: Optional[str] = None,
) -> Tuple[str, StateDict]:
    """Convert an official checkpoint's state dict to a zoo model's -> ``(model_name, state_dict)``.

    ``state_dict``: the tensors (or the whole checkpoint dict: ``state_dict``/``model`` containers and
    ``module.`` prefixes are unwrapped). ``layout``: ``'auto'`` or one of ``LAYOUTS``. ``model``: the zoo
    model to convert into (default: inferred from the depth, the block and its ratio). The result
    holds exactly the target model's keys, in its order (its classifier only if the source has one), and
    loads with ``model.load_state_dict(..., strict=True)`` (a backbone-only result: into ``num_classes=0``).
    Its tensors share memory with the input's where they can (copy before changing them in place).
    Raises ``CheckpointError`` listing missing, unexpected (by their source names) and mis-shaped keys.
    """
    _, model_name, converted, _, _, _ = _convert(state_dict, layout, model)
    return model_name, converted


def convert_checkpoint(
        src_path: PathLike,
        out_path: PathLike,
        layout: str = 'auto',
        model: Optional[str] = None,
) -> ConversionReport:
    """Convert an official checkpoint file into a gczoo ``.safetensors`` file; returns what was done.

    The file records the model, layout and source in its safetensors metadata and loads with
    ``timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=dict(file=out_path))``
    (add ``num_classes=K`` for a backbone-only file, see the module docstring).
    """
    src_path, out_path = Path(src_path), Path(out_path)
    if out_path.suffix != '.safetensors':
        raise ValueError(f'out_path must end in .safetensors, got {str(out_path)!r}')
    if out_path.exists() and src_path.exists() and out_path.resolve() == src_path.resolve():
        raise ValueError(f'out_path must differ from src_path, got {str(out_path)!r} for both')
    state_dict = read_state_dict(src_path)
    layout, model_name, converted, dropped, filled, num_classes = _convert(state_dict, layout, model)

    notes = []
    if not num_classes:
        notes.append('no classifier in the source: fine-tune with num_classes=K '
                     '(timm drops the cfg head when num_classes differs from 1000)')
    if layout == 'gcnet_mmdet':
        notes.append("mmdetection backbones must be style='pytorch' (stride in the 3x3 conv, as timm); "
                     "a 'caffe'-style checkpoint converts but computes something else")

    metadata = {'format': 'pt', 'gczoo_model': model_name, 'gczoo_layout': layout,
                'gczoo_source': src_path.name, 'num_classes': str(num_classes)}
    # whole or not at all: a full disk must not leave a truncated .safetensors that looks converted
    atomic_write(out_path, lambda f: f.write(safetensors_save(converted, metadata=metadata)))
    return ConversionReport(
        layout=layout, model_name=model_name, source=str(src_path), output=str(out_path),
        num_tensors=len(converted), num_classes=num_classes, dropped=dropped, filled=filled, notes=notes)


def _parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog='gczoo convert',
        description='Convert an official CBAM/BAM (Jongchan/attention-module) or GCNet/mmdetection/mmpretrain '
                    'ResNet checkpoint into gczoo safetensors loadable with '
                    'timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=OUT)).')
    parser.add_argument('src', help='the official checkpoint (.pth/.pth.tar/.safetensors)')
    parser.add_argument('out', help='the .safetensors file to write')
    parser.add_argument('--layout', default='auto', choices=('auto',) + LAYOUTS,
                        help='key layout of SRC (default: detected from its keys)')
    parser.add_argument('--model', default=None,
                        help='zoo model to convert into (default: inferred from depth, block and ratio)')
    parser.add_argument('--report-json', default=None, metavar='PATH', help='also write the report as JSON')
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """``gczoo convert SRC OUT`` (errors are printed by ``gczoo.runner.run``)."""
    args = _parser().parse_args(argv)
    report = convert_checkpoint(args.src, args.out, layout=args.layout, model=args.model)
    print(report)
    if args.report_json:
        atomic_write_text(args.report_json, json.dumps(report.to_dict(), indent=2) + '\n')
    return 0


if __name__ == '__main__':
    from gczoo.runner import run_main
    run_main(main, 'gczoo convert')
