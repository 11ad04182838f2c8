"""Clip folders for ``gczoo eval-video``: mmaction2's test-time sampling of the I3D configs, on videos
decoded by PyAV or on folders of decoded frames.

Layout: ``ROOT/<class>/<clip>``, a clip being a video file (``.mp4 .avi .mkv .webm .mov .m4v``, read
with PyAV: ``pip install av``) or a folder of frames (``.jpg .jpeg .png .bmp``, in natural name order:
``2.jpg`` before ``10.jpg``; hidden files skipped).
torchvision 0.29's ``torchvision.io`` has no video reader any more, so PyAV is the one decoder.

The views of one clip follow mmaction2's test pipeline (``SampleFrames(test_mode=True)``, ``Resize``,
``ThreeCrop``/``CenterCrop``, ``FormatShape('NCTHW')``):

* ``num_clips`` clips of ``clip_len`` frames ``frame_interval`` apart, their first frames spread evenly
  over ``[0, num_frames - ((clip_len - 1) * frame_interval + 1)]`` (rounded); indices past the end
  loop back to the start (mmaction2's ``out_of_bound_opt='loop'``), so short clips are still scored;
* every frame resized so its short side is ``resize_short`` (bilinear, torch's, not mmcv's cv2);
* ``num_crops`` = 3: three ``crop_size`` squares along the long side (start, end, middle), or 1: the
  centre crop;
* normalised with the model's mean/std (0-1 scale here; mmaction2's 0-255 values / 255).

A clip that cannot be read (not a video, no frames, a broken image) is returned as bad, with the reason:
``gczoo eval-video`` skips it and counts it.
"""
import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ['VIDEO_SUFFIXES', 'FRAME_SUFFIXES', 'ClipSampling', 'scan_clip_folder', 'empty_classes',
           'sample_test_clips', 'crop_offsets', 'read_clip', 'read_frames', 'clip_views', 'ClipFolder']

VIDEO_SUFFIXES = ('.mp4', '.avi', '.mkv', '.webm', '.mov', '.m4v')
FRAME_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp')


@dataclasses.dataclass(frozen=True)
class ClipSampling:
    """mmaction2's test-time sampling; defaults: the I3D configs' test pipeline (10 clips x 3 crops)."""
    clip_len: int = 32
    frame_interval: int = 2
    num_clips: int = 10
    num_crops: int = 3
    resize_short: int = 256
    crop_size: int = 256
    mean: Tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: Tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if self.num_crops not in (1, 3):
            raise ValueError(f'--num-crops must be 1 (centre crop) or 3 (ThreeCrop), got {self.num_crops}')
        if self.crop_size > self.resize_short:
            raise ValueError(f'--crop-size {self.crop_size} is larger than the resized short side --resize-short '
                             f'{self.resize_short}: crops must fit in the frame')

    def check_fits(self, model: str, min_input_size: Sequence[int], clip_flag: str = '--clip-len',
                   size_flag: str = '--crop-size') -> None:
        """``ValueError`` naming the flags when the views are smaller than the model's ``min_input_size``."""
        _, frames, height, width = min_input_size
        if self.clip_len < frames or self.crop_size < max(height, width):
            raise ValueError(f'{model} needs clips of at least {frames} frames and {height}x{width} pixels (its '
                             f'temporal pools and Non-local sub-sampling), got {self.clip_len} frames ({clip_flag}) '
                             f'of {self.crop_size}x{self.crop_size} ({size_flag})')

    @property
    def views(self) -> int:
        return self.num_clips * self.num_crops


def _is_clip(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() in VIDEO_SUFFIXES
    return path.is_dir()


def scan_clip_folder(root: os.PathLike) -> Tuple[List[Tuple[str, str]], List[str]]:
    """``([(clip path, class name)], sorted class names)``; ``ValueError`` naming what is wrong."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f'the clip folder {str(root)!r} does not exist or is not a folder')
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith('.'))
    if not classes:
        raise ValueError(f'{str(root)!r} has no class folders: expected ROOT/<class>/<video file or frame folder>')
    samples = [(str(clip), name) for name in classes for clip in sorted((root / name).iterdir())
               if not clip.name.startswith('.') and _is_clip(clip)]
    if not samples:
        loose = [p for name in classes for p in (root / name).iterdir() if p.suffix.lower() in FRAME_SUFFIXES]
        detail = (f'; it holds images directly (e.g. {str(loose[0])!r}): that is an image dataset, a clip is a '
                  f'video file or a folder of one clip\'s frames (ROOT/<class>/<clip>/<frame>.jpg)' if loose else '')
        raise ValueError(f'{str(root)!r} has class folders but no clips in them (video files with suffixes '
                         f'{" ".join(VIDEO_SUFFIXES)}, or folders of frames){detail}')
    return samples, classes


def empty_classes(samples: Sequence[Tuple[str, str]], classes: Sequence[str]) -> List[str]:
    """The class folders of :func:`scan_clip_folder` that hold no clip (they still take a class index)."""
    found = {name for _, name in samples}
    return [name for name in classes if name not in found]


def sample_test_clips(num_frames: int, clip_len: int, frame_interval: int, num_clips: int) -> np.ndarray:
    """(num_clips, clip_len) frame indices: mmaction2's ``SampleFrames(test_mode=True)`` for 3D models."""
    span = (clip_len - 1) * frame_interval + 1
    max_offset = max(num_frames - span, 0)
    if num_clips > 1:
        offsets = np.round(np.arange(num_clips) * (max_offset / float(num_clips - 1)))
    else:
        offsets = np.array([max_offset // 2])
    indices = offsets[:, None] + np.arange(clip_len)[None, :] * frame_interval
    return np.mod(indices, num_frames).astype(np.int64)


def crop_offsets(height: int, width: int, crop: int, num_crops: int) -> List[Tuple[int, int]]:
    """(top, left) of each crop: ThreeCrop's (start, end, middle) along the long side, or the centre."""
    if num_crops == 1:
        return [((height - crop) // 2, (width - crop) // 2)]
    if height == crop:
        step = (width - crop) // 2
        return [(0, 0), (0, 2 * step), (0, step)]
    step = (height - crop) // 2
    return [(0, 0), (2 * step, 0), (step, 0)]


def _natural(path: Path) -> Tuple[List[Any], str]:
    # numbers compare as numbers, so unpadded frame names keep time order: 2.jpg before 10.jpg
    # (parts alternate str, int, str...: always comparable; the name itself breaks ties such as 01 / 1)
    return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', path.name)], path.name


def _frame_files(folder: Path) -> List[Path]:
    """The frames of a folder in time order (natural name order); hidden files (``._0001.jpg``) are not frames."""
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and not p.name.startswith('.')),
                  key=_natural)


def _video_frames(path: Path, choose: Callable[[int], np.ndarray]) -> List[np.ndarray]:
    """The decoded frames ``choose(num_frames)`` of a video, only those kept in memory (a long video is
    never held whole): one pass when the stream's frame count is right, else a counting pass first."""
    import av  # the video decoder (pip install av)
    known = None
    for _ in range(2):
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError('the file has no video stream')
            stream = container.streams.video[0]
            num_frames = known if known is not None else int(stream.frames or 0)
            indices = choose(num_frames).ravel().tolist() if num_frames > 0 else []
            wanted, kept, count = set(indices), {}, 0
            for frame in container.decode(stream):
                if count in wanted:
                    kept[count] = frame.to_ndarray(format='rgb24')
                count += 1
        if count == 0:
            raise ValueError('the video has no frames')
        if count == num_frames:
            return [kept[i] for i in indices]
        known = count  # the container's count was missing or wrong: choose again from the decoded one
    raise ValueError('the video decodes to another number of frames on each read')


def read_clip(path: str, choose: Callable[[int], np.ndarray]) -> torch.Tensor:
    """The frames ``choose(num_frames)`` (indices, any shape) of one clip, (len, H, W, 3) uint8 in index
    order; ``ValueError`` saying why when the clip cannot be read. Frames are read as timm reads images
    (``gczoo.evaluate.decode_image``: grey and RGBA to RGB, 16-bit scaled to 8 bits, not clipped)."""
    p = Path(path)
    if p.is_dir():
        files = _frame_files(p)
        if not files:
            raise ValueError('no frames (.jpg/.png/.bmp files) in the folder')
        indices = choose(len(files)).ravel().tolist()
        from gczoo.evaluate import decode_image
        cache: Dict[int, np.ndarray] = {i: np.asarray(decode_image(str(files[i]))) for i in set(indices)}
        frames = [cache[i] for i in indices]
    else:
        frames = _video_frames(p, choose)
    if len({f.shape for f in frames}) != 1:
        sizes = sorted({f'{f.shape[1]}x{f.shape[0]}' for f in frames})
        raise ValueError(f'its frames differ in size ({", ".join(sizes[:4])}): every frame of a clip must have '
                         f'the same width x height')
    return torch.from_numpy(np.stack(frames))


def read_frames(path: str, sampling: ClipSampling) -> torch.Tensor:
    """The test-time frames of one clip, (num_clips * clip_len, H, W, 3) uint8 (see :func:`read_clip`)."""
    return read_clip(path, lambda n: sample_test_clips(n, sampling.clip_len, sampling.frame_interval,
                                                       sampling.num_clips))


def clip_views(frames: torch.Tensor, sampling: ClipSampling) -> torch.Tensor:
    """(num_clips * clip_len, H, W, 3) uint8 -> normalised views (num_clips * num_crops, 3, clip_len, S, S)."""
    x = frames.permute(0, 3, 1, 2)  # (N, 3, H, W) uint8, 0-255
    h, w = x.shape[-2:]
    scale = sampling.resize_short / min(h, w)
    size = (int(h * scale + 0.5), int(w * scale + 0.5))
    # resized 16 frames at a time: a float copy of all 320 full-size frames at once is 4x the decoded clip
    # (tens of GiB for a 4K video)
    x = torch.cat([F.interpolate(chunk.float(), size=size, mode='bilinear', align_corners=False)
                   for chunk in x.split(16)]).clamp_(0, 255) / 255.0
    mean = torch.tensor(sampling.mean).view(1, 3, 1, 1)
    std = torch.tensor(sampling.std).view(1, 3, 1, 1)
    x = (x - mean) / std
    x = x.view(sampling.num_clips, sampling.clip_len, 3, *size)
    crop = sampling.crop_size
    views = [x[:, :, :, top:top + crop, left:left + crop]
             for top, left in crop_offsets(size[0], size[1], crop, sampling.num_crops)]
    out = torch.stack(views, dim=1)  # (clips, crops, T, 3, S, S)
    return out.flatten(0, 1).permute(0, 2, 1, 3, 4).contiguous()


class ClipFolder(Dataset):
    """``(views, target, bad)`` per clip: views (V, 3, T, S, S), or None and the reason it is unreadable."""

    def __init__(self, samples: Sequence[Tuple[str, str]], class_to_idx: Dict[str, int], sampling: ClipSampling):
        self.samples = [(path, class_to_idx[name]) for path, name in samples]
        self.sampling = sampling

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[Optional[torch.Tensor], int, Optional[str]]:
        path, target = self.samples[index]
        try:
            return clip_views(read_frames(path, self.sampling), self.sampling), target, None
        except ModuleNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001  (any decoder failure makes the clip bad, counted, not fatal)
            text = ' '.join(str(e).split()) or type(e).__name__
            return None, target, f'{path}: {text}'

