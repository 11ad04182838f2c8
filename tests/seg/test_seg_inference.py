"""mmseg's test pipeline pieces on tiny stand-in models: keep-ratio test sizes as mmcv computes them, slide
inference (overlapping, crop larger than the image, batch 1 and 2) against the reference's slide_inference,
and segment_image's resize -> normalise -> predict -> resize back."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gczoo.seg.inference import normalize, predict_logits, rescale_size, resize_image, segment_image

import mmseg_reference as ref


class _Tiny(nn.Module):
    """A stride-4 stand-in with the segmentor's forward contract (logits resized to the input)."""

    def __init__(self, align_corners=False):
        super().__init__()
        self.align_corners = align_corners
        self.conv = nn.Conv2d(3, 4, 5, stride=4, padding=2)

    def forward(self, x):
        return F.interpolate(self.conv(x), size=x.shape[2:], mode='bilinear', align_corners=self.align_corners)


def _reference_slide(model, x, crop, stride):
    """mmseg_reference.EncoderDecoder.slide_inference with the tiny model as encode_decode."""
    holder = ref.EncoderDecoder.__new__(ref.EncoderDecoder)
    nn.Module.__init__(holder)
    holder.decode_head = type('H', (), {'conv_seg': type('C', (), {'out_channels': 4})()})()
    holder.encode_decode = lambda crop_img, shape: model(crop_img)
    return ref.EncoderDecoder.slide_inference(holder, x, crop, stride)


def test_rescale_size_is_mmcv_keep_ratio():
    assert rescale_size(1024, 2048, (2048, 1024)) == (1024, 2048)
    assert rescale_size(512, 683, (2048, 512)) == (512, 683)
    assert rescale_size(256, 341, (2048, 512)) == (512, 682)  # factor min(2048/341, 512/256) = 2
    assert rescale_size(1024, 2048, (2049, 1025)) == (1025, 2049)
    assert rescale_size(30, 40, None) == (30, 40)


@pytest.mark.parametrize('shape, crop, stride', [((1, 3, 50, 70), (32, 32), (20, 20)),
                                                 ((2, 3, 41, 29), (24, 24), (17, 13)),
                                                 ((1, 3, 20, 25), (32, 32), (20, 20))])  # crop > image
def test_slide_equals_reference(shape, crop, stride):
    torch.manual_seed(0)
    model = _Tiny().double()
    x = torch.randn(shape, dtype=torch.float64)
    with torch.no_grad():
        got = predict_logits(model, x, mode='slide', crop_size=crop, stride=stride)
        torch.testing.assert_close(got, _reference_slide(model, x, crop, stride), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match='crop_size'):
        predict_logits(model, x, mode='slide', crop_size=(0, 3), stride=stride)
    with pytest.raises(ValueError, match="'whole' or 'slide'"):
        predict_logits(model, x, mode='tiles')


def test_segment_image_pipeline():
    torch.manual_seed(0)
    model = _Tiny(align_corners=True)
    image = torch.randint(0, 256, (3, 30, 44), dtype=torch.uint8)
    config = dict(scale=(88, 60), mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), mode='whole',
                  align_corners=True)
    with torch.no_grad():
        logits = segment_image(model, image, config)
        size = rescale_size(30, 44, (88, 60))
        assert size == (60, 88)
        x = normalize(resize_image(image[None], size), config['mean'], config['std'])
        expected = F.interpolate(model(x), size=(30, 44), mode='bilinear', align_corners=True)[0]
    assert logits.shape == (4, 30, 44)
    torch.testing.assert_close(logits, expected)
    with pytest.raises(ValueError, match='RGB image'):
        segment_image(model, image[:1], config)
