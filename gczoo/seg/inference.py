"""Inference as mmsegmentation's ``EncoderDecoder`` does it: whole or slide mode, mmseg's test resize and
mean/std, logits resized back to the image's size with the config's ``align_corners``.

* :func:`normalize` -- mmseg's ``SegDataPreProcessor``: ``(x - mean) / std`` on 0..255 RGB values.
* :func:`rescale_size` -- mmcv's ``Resize(scale, keep_ratio=True)``: the factor
  ``min(max(scale) / long edge, min(scale) / short edge)``, each side ``int(side * factor + 0.5)``.
* :func:`predict_logits` -- whole mode is ``model(x)`` (``encode_decode``: logits resized to the input's
  size); slide mode runs crops of ``crop_size`` every ``stride`` (the last crop flush with the border,
  a smaller image decoded without padding), adds each crop's logits into place and divides by how many
  crops covered each pixel -- mmseg's ``slide_inference``.
* :func:`segment_image` -- all of the above on one uint8 RGB image: resize, normalise, predict, logits
  resized to the original size (mmseg's ``postprocess_result``).

The image resize is torch's bilinear interpolation (half-pixel centres, no antialiasing, as OpenCV's
``INTER_LINEAR`` that mmcv calls), rounded back to uint8; OpenCV's fixed-point arithmetic can differ by one
grey level, so predictions on a resized image are mmseg's up to that rounding (the model's logits for a
given input tensor are equal; tests/seg).
"""
from typing import Any, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['normalize', 'rescale_size', 'resize_image', 'check_slide_window', 'predict_logits', 'segment_image']

Size = Tuple[int, int]


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, 3, H, W) 0..255 RGB (any dtype) -> float32 ``(x - mean) / std`` per channel."""
    x = images.float()
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def rescale_size(height: int, width: int, scale: Optional[Sequence[int]]) -> Size:
    """The (H, W) mmcv's keep-ratio ``Resize(scale)`` gives an image of (height, width); unchanged without a scale."""
    if not scale:
        return height, width
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))  # a 1-pixel side stays 1


def resize_image(images: torch.Tensor, size: Size) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> (B, 3, *size) uint8, bilinear with half-pixel centres (see the module docstring)."""
    if tuple(images.shape[2:]) == tuple(size):
        return images
    out = F.interpolate(images.float(), size=size, mode='bilinear', align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _check_window(name: str, value: Any) -> Size:
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise ValueError(f'{name} must be two positive ints (height, width), got {value!r}')
    return int(value[0]), int(value[1])


def check_slide_window(crop_size: Any, stride: Any) -> Tuple[Size, Size]:
    """``(crop_size, stride)`` as int pairs; a ValueError unless both are positive and the stride is at most the
    crop on each axis (a larger stride leaves pixels that no crop covers)."""
    crop, step = _check_window('crop_size', crop_size), _check_window('stride', stride)
    if step[0] > crop[0] or step[1] > crop[1]:
        raise ValueError(f'stride {step} is larger than crop_size {crop}: pixels between crops would get no '
                         f'prediction; use a stride of at most the crop size (mmseg uses about 2/3 of it)')
    return crop, step


def predict_logits(model: nn.Module, x: torch.Tensor, *, mode: str = 'whole', crop_size: Optional[Size] = None,
                   stride: Optional[Size] = None) -> torch.Tensor:
    """Logits (B, K, H, W) at ``x``'s size for a normalised batch, in mmseg's whole or slide mode."""
    if mode == 'whole':
        return model(x)
    if mode != 'slide':
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
    (h_crop, w_crop), (h_stride, w_stride) = check_slide_window(crop_size, stride)
    batch, _, h_img, w_img = x.shape
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds: Optional[torch.Tensor] = None
    count = x.new_zeros((batch, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2, x2 = min(h_idx * h_stride + h_crop, h_img), min(w_idx * w_stride + w_crop, w_img)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            crop_logits = model(x[:, :, y1:y2, x1:x2])
            if preds is None:
                preds = x.new_zeros((batch, crop_logits.shape[1], h_img, w_img))
            preds += F.pad(crop_logits, (x1, w_img - x2, y1, h_img - y2))
            count[:, :, y1:y2, x1:x2] += 1
    assert preds is not None and bool((count > 0).all())  # the last crop of each axis is flush with the border
    return preds / count


def segment_image(model: nn.Module, image: torch.Tensor, config: Mapping[str, Any]) -> torch.Tensor:
    """Logits (K, H, W) at the original size of one (3, H, W) uint8 RGB image, with a tag's test pipeline
    ``config`` (``gczoo.seg.tags.tag_data_config``: scale, mean, std, mode, crop_size, stride, align_corners)."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f'expected one (3, H, W) RGB image, got shape {tuple(image.shape)}')
    if image.dtype != torch.uint8:  # a 0..1 float image would be normalised as 0..255: silently wrong classes
        raise ValueError(f'expected a uint8 (0..255) RGB image, got {image.dtype}; for a 0..1 float image pass '
                         f'(image * 255).round().to(torch.uint8)')
    height, width = image.shape[1:]
    device = next(model.parameters()).device
    images = resize_image(image.unsqueeze(0).to(device), rescale_size(height, width, config.get('scale')))
    x = normalize(images, config['mean'], config['std'])
    logits = predict_logits(model, x, mode=config.get('mode', 'whole'), crop_size=config.get('crop_size'),
                            stride=config.get('stride'))
    if tuple(logits.shape[2:]) != (height, width):
        logits = F.interpolate(logits, size=(height, width), mode='bilinear',
                               align_corners=bool(config.get('align_corners', False)))
    return logits[0]
