"""``gczoo bench models``: zoo models' speed as time ratios to timm's models, next to GMAC ratios.

Every zoo model is measured against timm's plain ResNet of its depth (``resnet50`` for the
ResNet-50s) and timm's nearest attention model where timm has one (``seresnet50``; ``resnet50`` with
timm's ``CbamModule`` in every block; ``resnet50`` with timm's ``GlobalContext`` where the zoo model
has GC), next to the GMAC ratio from ``gczoo.complexity`` (the one FLOP counter), so the target
"time ratio <= GMAC ratio + 0.03" can be read off. An A/A control - a deep copy of the plain ResNet
stepped in every group - gives the round-to-round noise floor of a model-level ratio.

Modes: ``infer`` (eval, ``inference_mode``), ``train`` (one plain step: forward, cross-entropy,
backward, SGD - the cost of the model, not the Trainer's extras such as EMA or loss scaling, which
are the same for every model) and ``compile`` (inference of ``torch.compile(model)``, inductor by
default: how close a model gets to its GMAC ratio once the memory-bound blocks are fused; reported,
no target; the compilation is warmup, not timed).
"""
import contextlib
import dataclasses
import gc
import statistics
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from gczoo.complexity import count_complexity
from gczoo.layers import ATTN_SPECS
from gczoo.errors import UsageError
from gczoo.models import ZOO_MODELS
from gczoo.models.registry import resolve_model_name

from .memory import peak_extra_memory
from .report import fmt, markdown, verdict
from .timing import check_clock, grouped_times, judge_targets, noise_floor, paired_ratio

__all__ = ['MODEL_MODES', 'ModelEntry', 'nearest_timm_model', 'timm_gc_resnet', 'bench_models', 'format_model_table']

MODEL_MODES = ('infer', 'train', 'compile')
_TARGET_MODES = ('infer', 'train')  # compile is reported without a target
_CONTROL = ' (A/A copy)'  # suffix of the control copy of a plain ResNet


@dataclasses.dataclass
class ModelEntry:
    """A model to measure: its label in the tables, how to build it, and what it is."""
    label: str
    build: Callable[[], nn.Module]
    description: str


def _gc_ratio(zoo_name: str) -> Optional[float]:
    """rd_ratio of the zoo model's GC blocks, or None if it has other attention than GC."""
    ratios = set()
    for p in ZOO_MODELS[zoo_name].placements:
        spec = ATTN_SPECS[p.attn]
        if spec.cls.__name__ != 'ContextBlock':
            return None
        kw = {**spec.kwargs, **p.kwargs}
        fusions = tuple(kw.get('fusion_types', ('channel_add',)))
        if kw.get('pooling_type', 'att') != 'att' or fusions != ('channel_add',):
            return None
        ratios.add(kw.get('rd_ratio', 1. / 16))
    return ratios.pop() if len(ratios) == 1 else None


def timm_gc_resnet(depth: int, rd_ratio: float, zoo_name: str) -> nn.Module:
    """timm ResNet with timm's GlobalContext ('gca': fuse_add) where the zoo model has its GC blocks.

    ``block_args=dict(attn_layer=...)`` puts the block in every residual block of every stage; the blocks
    of the stages / indices the zoo model leaves empty (layer1 for GCNet's c3-c5) are replaced by
    ``nn.Identity`` so the comparison is block for block.
    """
    from timm.layers import GlobalContext
    attn = partial(GlobalContext, fuse_add=True, fuse_scale=False, rd_ratio=rd_ratio, rd_divisor=1)
    model = timm.create_model(f'resnet{depth}', block_args=dict(attn_layer=attn))
    covered = {}
    for p in ZOO_MODELS[zoo_name].placements:
        covered.update(p.stages)
    for stage in (1, 2, 3, 4):
        blocks = list(getattr(model, f'layer{stage}').children())
        keep = set(range(len(blocks))) if covered.get(stage, ()) is None else \
            {range(len(blocks))[i] for i in covered.get(stage, ())}
        for i, blk in enumerate(blocks):
            if i not in keep:
                blk.se = nn.Identity()
    return model


def nearest_timm_model(zoo_name: str) -> Optional[ModelEntry]:
    """timm's nearest attention model for a zoo model (None where timm has no such model)."""
    zoo = ZOO_MODELS[zoo_name]
    depth = zoo.depth
    attns = {p.attn for p in zoo.placements}
    if attns == {'se'} and f'seresnet{depth}' in timm.list_models(f'seresnet{depth}'):
        return ModelEntry(f'seresnet{depth}', partial(timm.create_model, f'seresnet{depth}'),
                          f"timm 'seresnet{depth}' (SE r16 in every block)")
    if attns == {'cbam'}:
        return ModelEntry(f'resnet{depth}+cbam', partial(timm.create_model, f'resnet{depth}',
                                                         block_args=dict(attn_layer='cbam')),
                          f"timm 'resnet{depth}', block_args attn_layer='cbam' (CbamModule in every block)")
    ratio = _gc_ratio(zoo_name)
    if ratio is not None:
        stages = sorted({s for p in zoo.placements for s in p.stages})
        r = round(1 / ratio)
        return ModelEntry(
            f'resnet{depth}+gca(r{r},l{"".join(map(str, stages))})', partial(timm_gc_resnet, depth, ratio, zoo_name),
            f"timm 'resnet{depth}', block_args attn_layer=GlobalContext(fuse_add=True, fuse_scale=False, "
            f"rd_ratio=1/{r}) (= timm's 'gca' at the zoo's ratio), kept only where the zoo model has GC "
            f"(layer{', layer'.join(map(str, stages))}; the other blocks' attention replaced by Identity)")
    return None


def _autocast(device: torch.device, amp_dtype: Optional[torch.dtype]):
    return contextlib.nullcontext() if amp_dtype is None else torch.autocast(device.type, dtype=amp_dtype)


def _train_step(model: nn.Module, x: torch.Tensor, amp_dtype: Optional[torch.dtype]) -> Callable[[], None]:
    """A plain forward / cross-entropy / backward / SGD step (no loss scaling: only its time matters)."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    target = torch.randint(0, 1000, (x.shape[0],), generator=torch.Generator().manual_seed(0)).to(x.device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(x.device, amp_dtype):
            loss = F.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()
    return step


def _infer_step(model: Callable[[torch.Tensor], Any], x: torch.Tensor,
                amp_dtype: Optional[torch.dtype]) -> Callable[[], Any]:
    def step() -> Any:
        with torch.inference_mode(), _autocast(x.device, amp_dtype):
            return model(x)
    return step


def _compiled_step(model: nn.Module, x: torch.Tensor, amp_dtype: Optional[torch.dtype],
                   backend: str) -> Callable[[], Any]:
    compiled = torch.compile(model.eval(), backend=backend, dynamic=False)

    def step() -> Any:
        with torch.no_grad(), _autocast(x.device, amp_dtype):  # dynamo traces no_grad; inference_mode is eager-only
            return compiled(x)
    return step


def _many_compiled_models():
    """Dynamo keeps a few compiled graphs per code object, and every timm ResNet shares ``forward``."""
    cfg = torch._dynamo.config
    limits = {name: 1024 for name in ('recompile_limit', 'cache_size_limit', 'accumulated_recompile_limit')
              if hasattr(cfg, name)}
    return cfg.patch(**limits)


_Pairing = Tuple[str, Optional[str], Optional[str]]  # a zoo model's references: (base, nearest, control)


def _model_entries(models: Sequence[str], control: bool) -> Tuple[Dict[str, 'ModelEntry'], Dict[str, _Pairing]]:
    """Every model to build (zoo models, their plain timm ResNets, A/A copies, nearest timm models) and
    each zoo model's references."""
    entries: Dict[str, ModelEntry] = {}
    pairing: Dict[str, _Pairing] = {}
    for name in models:
        base = f'resnet{ZOO_MODELS[name].depth}'
        entries[name] = ModelEntry(name, partial(timm.create_model, name), ZOO_MODELS[name].summary)
        entries.setdefault(base, ModelEntry(base, partial(timm.create_model, base), f"timm '{base}'"))
        if control:
            entries.setdefault(base + _CONTROL, ModelEntry(base + _CONTROL, partial(timm.create_model, base),
                                                           f"timm '{base}', a second copy: the A/A control"))
        nearest = nearest_timm_model(name)
        if nearest is not None:
            entries.setdefault(nearest.label, nearest)
        pairing[name] = (base, nearest.label if nearest else None, base + _CONTROL if control else None)
    return entries, pairing


def _build_all(entries: Dict[str, 'ModelEntry'], img_size: int, dev: torch.device, channels_last: bool,
               progress: bool) -> Tuple[Dict[str, nn.Module], Dict[str, Dict[str, Any]]]:
    """Each entry built (seed 0) on ``dev``, with its parameter count and GMACs."""
    built: Dict[str, nn.Module] = {}
    raw: Dict[str, Dict[str, Any]] = {}
    for label, entry in tqdm(entries.items(), desc='build + GMACs', disable=not progress, dynamic_ncols=True):
        torch.manual_seed(0)
        model = entry.build()
        raw[label] = dict(description=entry.description, params_m=sum(p.numel() for p in model.parameters()) / 1e6,
                          gmacs=count_complexity(model, img_size)['gmacs'])
        model = model.to(dev)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        built[label] = model
    return built, raw


def _add_figures(raw: Dict[str, Dict[str, Any]], batches: Sequence[int], modes: Sequence[str],
                 times: Dict[Tuple[int, str], List[Dict[str, List[float]]]], peaks: Dict[int, Dict[str, float]]) -> None:
    """Median step times and img/s of every model, per batch size (and at the top level for one)."""
    for label in raw:
        raw[label]['by_batch'] = {}
        for b in batches:
            figures = raw[label]['by_batch'][b] = {}
            for mode in modes:
                all_times = [t for group_times in times[b, mode] for t in group_times.get(label, [])]
                figures[f'{mode}_ms'] = statistics.median(all_times) * 1e3
                figures[f'{mode}_img_s'] = b / statistics.median(all_times)
                figures[f'{mode}_times_s'] = all_times
            figures['train_peak_mib'] = peaks.get(b, {}).get(label)
        if len(batches) == 1:  # one batch size: the figures also at the top level
            raw[label].update(raw[label]['by_batch'][batches[0]])


def bench_models(
        models: Optional[Sequence[str]] = None,
        batch: Union[int, Sequence[int]] = 8,
        img_size: int = 224,
        steps: int = 3,
        warmup: int = 1,
        modes: Sequence[str] = ('infer', 'train'),
        device: str = 'cpu',
        amp: Optional[bool] = None,
        channels_last: Optional[bool] = None,
        clock: str = 'wall',
        control: bool = True,
        compile_backend: str = 'inductor',
        progress: bool = True,
) -> Tuple[List[Dict[str, Any]], Dict[str, Dict[str, Any]]]:
    """Throughput of zoo models vs timm; returns (one row per zoo model and batch size, raw figures).

    All models (zoo models, their same-depth plain timm ResNets and an A/A copy of each, timm's nearest
    attention models) live in one process. Each zoo model forms a group with its references; every round
    steps each group in turn, the members of a group in a new random order, so a zoo model and its
    references are measured seconds apart and the ratios are medians of per-round paired ratios (a
    reference is stepped in every group it belongs to; its img/s is the median over all its steps).
    """
    models = list(ZOO_MODELS) if models is None else list(models)
    for name in models:  # untrained architectures: no tag, no weights folder
        if resolve_model_name(name, what='models', zoo=ZOO_MODELS, folders=False).tag:
            raise UsageError(f'models: {name!r}: name the architecture without a tag (the benchmark builds it '
                             f'untrained)')
    for mode in modes:
        if mode not in MODEL_MODES:
            raise ValueError(f'modes must be among {list(MODEL_MODES)}, got {mode!r}')
    batches = [batch] if isinstance(batch, int) else list(batch)
    if not batches or any(not isinstance(b, int) or b < 1 for b in batches):
        raise ValueError(f'batch must be a positive int or a list of them, got {batch!r}')
    dev = torch.device(device)
    check_clock(clock, dev)
    amp = dev.type == 'cuda' if amp is None else amp
    channels_last = dev.type == 'cuda' if channels_last is None else channels_last
    amp_dtype = None
    if amp:
        amp_dtype = torch.bfloat16 if dev.type == 'cpu' or torch.cuda.is_bf16_supported() else torch.float16

    entries, pairing = _model_entries(models, control)
    built, raw = _build_all(entries, img_size, dev, channels_last, progress)
    groups = [[name, *(ref for ref in pairing[name] if ref)] for name in models]
    times: Dict[Tuple[int, str], List[Dict[str, List[float]]]] = {}
    peaks: Dict[int, Dict[str, float]] = {}  # CUDA: batch -> label -> training step's peak MiB
    total = len(batches) * len(modes) * steps * sum(len(g) for g in groups)
    with tqdm(total=total, desc='bench models', unit='step', disable=not progress, dynamic_ncols=True) as bar:
        for b in batches:
            x = torch.randn(b, 3, img_size, img_size, generator=torch.Generator().manual_seed(0)).to(dev)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            for mode in modes:
                bar.set_postfix_str(f'batch {b} {mode}')
                with _many_compiled_models() if mode == 'compile' else contextlib.nullcontext():
                    if mode == 'compile':
                        fns = {label: _compiled_step(m, x, amp_dtype, compile_backend) for label, m in built.items()}
                    else:
                        make = _train_step if mode == 'train' else _infer_step
                        fns = {label: make(m.eval() if mode == 'infer' else m, x, amp_dtype)
                               for label, m in built.items()}
                    times[b, mode] = grouped_times(fns, groups, steps, warmup, dev, progress=bar, clock=clock,
                                                   min_warmup=1 if mode == 'compile' else 0)
                    if mode == 'train' and dev.type == 'cuda':
                        peaks[b] = _cuda_training_peaks(fns, dev)
                del fns
                gc.collect()

    _add_figures(raw, batches, modes, times, peaks)
    rows = [_model_row(name, group_idx, b, pairing[name], raw, times, modes, img_size, dev, amp_dtype,
                       channels_last, clock, steps)
            for b in batches for group_idx, name in enumerate(models)]
    return rows, raw


def _cuda_training_peaks(steps: Dict[str, Callable[[], Any]], dev: torch.device) -> Dict[str, float]:
    """Peak CUDA memory of one training step of each model beyond what was live before it (activations,
    gradients, the optimizer's state after its first step), in MiB. CUDA only: on the CPU the resident set
    of a process that has run the timings does not follow live memory (see ``gczoo.bench.memory``)."""
    peaks = {}
    for label, step in steps.items():
        gc.collect()
        torch.cuda.empty_cache()
        peaks[label] = peak_extra_memory(step, dev)[0] / 2 ** 20
    return peaks


def _model_row(name: str, group_idx: int, batch: int, pairing: Tuple[str, Optional[str], Optional[str]],
               raw: Dict[str, Dict[str, Any]], times: Dict[Tuple[int, str], List[Dict[str, List[float]]]],
               modes: Sequence[str], img_size: int, dev: torch.device, amp_dtype: Optional[torch.dtype],
               channels_last: bool, clock: str, steps: int) -> Dict[str, Any]:
    base, nearest, control = pairing
    gmac_ratio = raw[name]['gmacs'] / raw[base]['gmacs']
    row: Dict[str, Any] = dict(
        model=name, base=base, nearest=nearest or '', batch=batch, img_size=img_size, device=dev.type,
        amp=str(amp_dtype).replace('torch.', '') if amp_dtype else 'off', channels_last=channels_last,
        threads=torch.get_num_threads(), clock=clock, steps=steps, params_m=raw[name]['params_m'],
        gmacs=raw[name]['gmacs'], base_gmacs=raw[base]['gmacs'],
        gmac_ratio=gmac_ratio, target_time_ratio=gmac_ratio + 0.03,
        nearest_gmac_ratio=raw[nearest]['gmacs'] / raw[base]['gmacs'] if nearest else None,
    )
    targets, noise = [], []
    for mode in MODEL_MODES:
        group_times = times[batch, mode][group_idx] if mode in modes else None
        for ref, ref_name in (('base', base), ('nearest', nearest), ('control', control)):
            key = f'{mode}_time_ratio_{ref}'
            q1 = med = q3 = None
            if group_times is not None and ref_name:
                # the control is the A/A pair (copy / original), the others zoo / reference
                num, den = (group_times[control], group_times[base]) if ref == 'control' else \
                    (group_times[name], group_times[ref_name])
                q1, med, q3 = paired_ratio(num, den)
            row[key], row[f'{key}_q1'], row[f'{key}_q3'] = med, q1, q3
        # timm's own attention model against the plain ResNet: the overhead a reference implementation has
        row[f'nearest_{mode}_time_ratio_base'] = paired_ratio(group_times[nearest], group_times[base])[1] \
            if group_times is not None and nearest else None
        for prefix, label in (('', name), ('base_', base), ('nearest_', nearest)):
            row[f'{prefix}{mode}_img_s'] = raw[label]['by_batch'][batch][f'{mode}_img_s'] \
                if label and mode in modes else None
            if mode == 'train':
                row[f'{prefix}train_peak_mib'] = raw[label]['by_batch'][batch].get('train_peak_mib') if label else None
        if mode in _TARGET_MODES and mode in modes:
            targets.append((f'{mode}_time_ratio_base', f'{mode} vs {base} <= GMAC ratio + 0.03',
                            row['target_time_ratio']))
            if nearest:
                targets.append((f'{mode}_time_ratio_nearest', f'{mode} vs {nearest} <= 1', 1.0))
            noise.append(noise_floor(row, f'{mode}_time_ratio_control'))
    known = [n for n in noise if n is not None]
    row['time_noise'] = max(known) if known else None
    judge_targets(row, targets, noise=row['time_noise'])
    return row


def format_model_table(rows: Sequence[Dict[str, Any]]) -> str:
    """Time ratios (zoo / timm; < 1 means the zoo model is faster) next to the GMAC ratio.

    'A/A' is a second copy of the plain ResNet against the first: the noise floor of every ratio of
    its row. 'timm ... t/base' is timm's nearest attention model against the plain ResNet: what the
    block costs in timm's implementation. 'compile' columns: both sides ``torch.compile``d.
    """
    header = ['model', 'batch', 'GMACs', 'GMAC ratio', 'target', 'infer img/s', 'infer t/base', 'train img/s',
              'train t/base', 'compile t/base', 'nearest timm', 'infer t/nearest', 'train t/nearest',
              'compile t/nearest', 'timm infer t/base', 'timm train t/base', 'A/A infer', 'A/A train', 'A/A compile',
              'targets']
    lines = [header]
    for r in rows:
        lines.append([
            r['model'], str(r['batch']), fmt(r['gmacs']), fmt(r['gmac_ratio'], '.3f'),
            f"<= {r['target_time_ratio']:.3f}",
            fmt(r['infer_img_s'], '.1f'), fmt(r['infer_time_ratio_base'], '.3f'),
            fmt(r['train_img_s'], '.1f'), fmt(r['train_time_ratio_base'], '.3f'),
            fmt(r['compile_time_ratio_base'], '.3f'),
            r['nearest'] or '-', fmt(r['infer_time_ratio_nearest'], '.3f'), fmt(r['train_time_ratio_nearest'], '.3f'),
            fmt(r['compile_time_ratio_nearest'], '.3f'),
            fmt(r['nearest_infer_time_ratio_base'], '.3f'), fmt(r['nearest_train_time_ratio_base'], '.3f'),
            fmt(r['infer_time_ratio_control'], '.3f'), fmt(r['train_time_ratio_control'], '.3f'),
            fmt(r['compile_time_ratio_control'], '.3f'), verdict(r),
        ])
    if any(r.get('train_peak_mib') is not None for r in rows):  # CUDA runs: the training step's peak memory
        lines[0] += ['train peak MiB', 'mem/base', 'mem/nearest']
        for line, r in zip(lines[1:], rows):
            line += [fmt(r.get('train_peak_mib'), '.0f'), fmt(_ratio(r, 'train_peak_mib', 'base_'), '.3f'),
                     fmt(_ratio(r, 'train_peak_mib', 'nearest_'), '.3f')]
    return markdown(lines)


def _ratio(row: Dict[str, Any], key: str, prefix: str) -> Optional[float]:
    num, den = row.get(key), row.get(prefix + key)
    return num / den if num is not None and den else None
