"""Top-1/top-5 accuracy and loss of a model over a loader, correct across ``torch.distributed`` ranks.

torchmetrics keeps the metric states and sums them over ranks (timm's ``AverageMeter`` is per
process), so every rank of a torchrun job returns the figures of the whole dataset.
"""
import contextlib
from typing import Dict, Iterable, Optional

import torch
import torch.nn as nn

__all__ = ['validate']


@torch.no_grad()
def validate(
        model: nn.Module,
        loader: Iterable,
        *,
        num_classes: int,
        device: torch.device = torch.device('cpu'),
        amp_dtype: Optional[torch.dtype] = None,
        channels_last: bool = False,
        criterion: Optional[nn.Module] = None,
        progress: Optional[str] = None,
) -> Dict[str, float]:
    """Top-1/top-5 accuracy (percent), mean loss and sample count of ``model`` over ``loader``.

    With ``torch.distributed`` initialised, each rank sees its own shard (use ``ShardSampler`` so no
    sample is duplicated or dropped) and torchmetrics sums the states across ranks, so every rank
    returns the figures of the whole dataset.
    """
    import torchmetrics  # the train/eval extra; imported here so `import gczoo.evaluate` stays light
    was_training = model.training
    model.eval()
    top_k = min(5, num_classes)
    metrics = torchmetrics.MetricCollection({
        'top1': torchmetrics.classification.MulticlassAccuracy(num_classes=num_classes, top_k=1, average='micro'),
        f'top{top_k}': torchmetrics.classification.MulticlassAccuracy(num_classes=num_classes, top_k=top_k, average='micro'),
    }).to(device)
    # nan_strategy='disable': torchmetrics' default drops NaN values with a warning, which made a
    # diverged model report a mean loss of 0.0; a NaN loss must reach the callers' finiteness checks
    loss_sum = torchmetrics.SumMetric(nan_strategy='disable').to(device)
    count = torchmetrics.SumMetric(nan_strategy='disable').to(device)
    criterion = criterion or nn.CrossEntropyLoss()
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    if progress:
        from tqdm import tqdm
        loader = tqdm(loader, desc=progress, leave=False)
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast:
            logits = model(images)
        logits = logits.float()
        metrics.update(logits, targets)
        loss_sum.update(criterion(logits, targets) * targets.numel())
        count.update(torch.tensor(float(targets.numel()), device=device))
    n = float(count.compute())
    results = {k: 100.0 * float(v) for k, v in metrics.compute().items()} if n else {'top1': 0.0, f'top{top_k}': 0.0}
    if top_k != 5:
        results['top5'] = results[f'top{top_k}']
    results['loss'] = float(loss_sum.compute()) / n if n else float('nan')
    results['count'] = n
    model.train(was_training)
    return results
