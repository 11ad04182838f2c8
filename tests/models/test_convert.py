"""``gczoo convert``: official CBAM/BAM/GCNet checkpoints -> gczoo safetensors.

The official state dicts are built here from a zoo model's tensors, renamed by hand to the official
key layout as the official model code defines it (Jongchan/attention-module ``MODELS/model_resnet.py``,
``cbam.py``, ``bam.py``; GCNet/mmdetection ``Bottleneck.context_block``), with the official widths,
and wrapped the way the official training scripts save them. Converting and loading must give the
source model's outputs exactly.
"""
import json
from typing import Dict

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from safetensors import safe_open

import gczoo  # noqa: F401  (registers the models)
from gczoo.models import CheckpointError, attention_modules, init_from_resnet
from gczoo.cli import main as cli_main
from gczoo.models.convert import LAYOUTS, convert_checkpoint, convert_state_dict, detect_layout
from gczoo.models.weights import read_state_dict

BN = ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')

# Official CBAM (cbam.py): CBAM.ChannelGate.mlp = Sequential(Flatten, Linear, ReLU, Linear);
# CBAM.SpatialGate.spatial = BasicConv(conv (no bias), bn)
CBAM_OFFICIAL = {
    'channel_gate.fc1.weight': 'ChannelGate.mlp.1.weight', 'channel_gate.fc1.bias': 'ChannelGate.mlp.1.bias',
    'channel_gate.fc2.weight': 'ChannelGate.mlp.3.weight', 'channel_gate.fc2.bias': 'ChannelGate.mlp.3.bias',
    'spatial_gate.conv.weight': 'SpatialGate.spatial.conv.weight',
    **{f'spatial_gate.bn.{k}': f'SpatialGate.spatial.bn.{k}' for k in BN},
}


def _bam_official() -> Dict[str, str]:
    """Official BAM (bam.py): channel_att.gate_c / spatial_att.gate_s Sequentials with named children."""
    m = {}
    for k in ('weight', 'bias'):
        m[f'channel_gate.layers.0.fc.{k}'] = f'channel_att.gate_c.gate_c_fc_0.{k}'
        m[f'channel_gate.proj.{k}'] = f'channel_att.gate_c.gate_c_fc_final.{k}'
        m[f'spatial_gate.reduce.conv.{k}'] = f'spatial_att.gate_s.gate_s_conv_reduce0.{k}'
        m[f'spatial_gate.proj.{k}'] = f'spatial_att.gate_s.gate_s_conv_final.{k}'
        for i in (0, 1):
            m[f'spatial_gate.dilated.{i}.conv.{k}'] = f'spatial_att.gate_s.gate_s_conv_di_{i}.{k}'
    for k in BN:
        m[f'channel_gate.layers.0.bn.{k}'] = f'channel_att.gate_c.gate_c_bn_1.{k}'
        m[f'spatial_gate.reduce.bn.{k}'] = f'spatial_att.gate_s.gate_s_bn_reduce0.{k}'
        for i in (0, 1):
            m[f'spatial_gate.dilated.{i}.bn.{k}'] = f'spatial_att.gate_s.gate_s_bn_di_{i}.{k}'
    return m


BAM_OFFICIAL = _bam_official()
BAM_AFTER = {'layer1.attn2.': 'bam1.', 'layer2.attn3.': 'bam2.', 'layer3.attn5.': 'bam3.'}


def to_cbam_official(sd):
    out = {}
    for k, v in sd.items():
        if '.se.' in k:
            block, suffix = k.split('.se.')
            k = f'{block}.cbam.{CBAM_OFFICIAL[suffix]}'
        out['module.' + k] = v  # saved from nn.DataParallel
    return out


def to_bam_official(sd):
    out = {}
    for k, v in sd.items():
        for ours, official in BAM_AFTER.items():
            if k.startswith(ours):
                k = official + BAM_OFFICIAL[k[len(ours):]]
        out['module.' + k] = v
    return out


def to_mmdet(sd, prefix='backbone.', postfix=''):
    """A detector checkpoint: backbone (GC block = ``context_block<postfix>``), no fc, neck and heads."""
    out = {prefix + k.replace('.se.', f'.context_block{postfix}.'): v for k, v in sd.items() if not k.startswith('fc.')}
    out.update({
        'neck.lateral_convs.0.conv.weight': torch.zeros(256, 256, 1, 1),
        'rpn_head.rpn_cls.weight': torch.zeros(3, 256, 1, 1),
        'roi_head.bbox_head.fc_cls.weight': torch.zeros(81, 1024),
    })
    return out


def official_checkpoint(state_dict):
    """What Jongchan/attention-module's train_imagenet.py saves."""
    return {'epoch': 100, 'arch': 'resnet', 'state_dict': state_dict, 'best_prec1': torch.tensor(77.622),
            'optimizer': {'state': {}, 'param_groups': [{'lr': 0.001, 'momentum': 0.9, 'params': [0, 1]}]}}


def mmdet_checkpoint(state_dict):
    """What mmcv's save_checkpoint writes (meta holds only strings and tuples here)."""
    return {'meta': {'mmdet_version': '1.0rc0+d3ca926', 'config': 'model = dict(...)', 'time': 'Sun Jun  2 2019',
                     'CLASSES': ('person', 'bicycle')}, 'state_dict': state_dict}


def perturbed(name: str, **kwargs) -> nn.Module:
    """A zoo model in eval mode whose attention parameters and BN statistics are off their init."""
    model = timm.create_model(name, **kwargs)
    with torch.no_grad():
        for _, block in attention_modules(model):
            for n, t in list(block.named_parameters()) + list(block.named_buffers()):
                if n.endswith('running_var'):
                    t.uniform_(0.5, 1.5)
                elif t.is_floating_point():
                    t.add_(0.1 * torch.randn_like(t))
    return model.eval()


def x64():
    return torch.randn(2, 3, 64, 64)


def meta_state_dict(name: str, **kwargs) -> Dict[str, torch.Tensor]:
    """Right names and shapes, uninitialised values: for tests that never run the model."""
    with torch.device('meta'):
        model = timm.create_model(name, **kwargs)
    return {k: torch.empty(v.shape, dtype=v.dtype) for k, v in model.state_dict().items()}


@pytest.fixture(scope='module')
def cbam_model():
    return perturbed('resnet50_cbam')


@pytest.fixture(scope='module')
def gc_model():
    return perturbed('resnet50_gc')


@pytest.fixture(scope='module')
def cbam_official(cbam_model):
    return to_cbam_official(cbam_model.state_dict())


def test_official_widths_are_the_official_codes():
    """CBAM(planes * 4, 16) in every bottleneck; BAM(64/128/256 * 4) after layer1-3 (model_resnet.py)."""
    cbam = to_cbam_official(meta_state_dict('resnet50_cbam'))
    assert cbam['module.layer1.0.cbam.ChannelGate.mlp.1.weight'].shape == (256 // 16, 256)
    assert cbam['module.layer4.2.cbam.ChannelGate.mlp.3.weight'].shape == (2048, 2048 // 16)
    assert cbam['module.layer2.0.cbam.SpatialGate.spatial.conv.weight'].shape == (1, 2, 7, 7)
    bam = to_bam_official(meta_state_dict('resnet50_bam'))
    for i, c in ((1, 256), (2, 512), (3, 1024)):
        assert bam[f'module.bam{i}.channel_att.gate_c.gate_c_fc_0.weight'].shape == (c // 16, c)
        assert bam[f'module.bam{i}.spatial_att.gate_s.gate_s_conv_di_1.weight'].shape == (c // 16, c // 16, 3, 3)
        assert bam[f'module.bam{i}.spatial_att.gate_s.gate_s_conv_final.weight'].shape == (1, c // 16, 1, 1)
    assert not [k for k in bam if '.attn' in k or '.se.' in k]


def test_cbam_official_checkpoint_converts_and_loads_with_timm(tmp_path, cbam_model, cbam_official):
    src = tmp_path / 'RESNET50_CBAM_new_name_wrap.pth'
    # the released files were written by PyTorch 0.4.1: the old (non-zip) serialisation
    torch.save(official_checkpoint(cbam_official), src, _use_new_zipfile_serialization=False)
    out = tmp_path / 'resnet50_cbam.safetensors'
    report = convert_checkpoint(src, out)
    assert (report.layout, report.model_name, report.num_classes) == ('cbam_official', 'resnet50_cbam', 1000)
    assert report.dropped == [] and report.filled == []
    assert report.num_tensors == len(cbam_model.state_dict())
    with safe_open(str(out), 'pt') as f:
        assert f.metadata()['gczoo_model'] == 'resnet50_cbam'

    loaded = timm.create_model('resnet50_cbam', pretrained=True, pretrained_cfg_overlay=dict(file=str(out))).eval()
    x = x64()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), cbam_model(x), rtol=0, atol=0)
    assert 'pretrained_cfg_overlay=dict(file=' in report.load_snippet and 'num_classes' not in report.load_snippet


def test_bam_official_checkpoint_converts_and_loads_with_timm(tmp_path):
    model = perturbed('resnet50_bam')
    src = tmp_path / 'RESNET50_IMAGENET_BAM_best.pth.tar'
    torch.save(official_checkpoint(to_bam_official(model.state_dict())), src)
    out = tmp_path / 'resnet50_bam.safetensors'
    report = convert_checkpoint(src, out, layout='bam_official')
    assert (report.layout, report.model_name) == ('bam_official', 'resnet50_bam')
    loaded = timm.create_model('resnet50_bam', pretrained=True, pretrained_cfg_overlay=dict(file=str(out))).eval()
    x = x64()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_gcnet_mmdet_detector_gives_a_backbone_file(tmp_path, gc_model):
    src = tmp_path / 'mask_rcnn_r16_gcb_c3-c5_r50_fpn_1x.pth'
    torch.save(mmdet_checkpoint(to_mmdet(gc_model.state_dict())), src)
    out = tmp_path / 'resnet50_gc_mmdet.safetensors'
    report = convert_checkpoint(src, out)
    assert (report.layout, report.model_name, report.num_classes) == ('gcnet_mmdet', 'resnet50_gc', 0)
    assert sorted(report.dropped) == ['neck.lateral_convs.0.conv.weight', 'roi_head.bbox_head.fc_cls.weight',
                                      'rpn_head.rpn_cls.weight']
    assert 'num_classes=K' in report.load_snippet
    assert 'neck.* (1)' in str(report) and 'backbone only' in str(report)

    # the documented way: a new head of your size; every other tensor is the detector's
    model = timm.create_model('resnet50_gc', pretrained=True, num_classes=7,
                              pretrained_cfg_overlay=dict(file=str(out))).eval()
    x = x64()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), gc_model.forward_features(x), rtol=0, atol=0)
    assert model.fc.out_features == 7


@pytest.mark.parametrize('prefix,postfix', [('module.backbone.', ''), ('backbone.', '1'), ('', '')])
def test_gcnet_key_variants(gc_model, prefix, postfix):
    """GCNet (mmdet v1) and mmdet v2 plugins both name the block context_block (+ an optional postfix);
    DataParallel adds 'module.'; a backbone saved alone has no 'backbone.' prefix."""
    sd = to_mmdet(gc_model.state_dict(), prefix, postfix)
    if not prefix:
        sd = {k: v for k, v in sd.items() if k.startswith(('conv1', 'bn1', 'layer'))}
    assert detect_layout(sd) == 'gcnet_mmdet'
    name, converted = convert_state_dict(sd)
    expected = {k: v for k, v in gc_model.state_dict().items() if not k.startswith('fc.')}
    assert name == 'resnet50_gc' and list(converted) == list(expected)
    assert all(torch.equal(converted[k], v) for k, v in expected.items())


def test_gcnet_backbone_file_loads_with_init_from_resnet_too(tmp_path, gc_model):
    src = tmp_path / 'backbone.pth'
    torch.save(to_mmdet(gc_model.state_dict(), prefix='backbone.'), src)
    out = tmp_path / 'gc.safetensors'
    convert_checkpoint(src, out)
    model = timm.create_model('resnet50_gc', num_classes=5).eval()
    report = init_from_resnet(model, out)
    assert report.kept_at_init == [] and report.skipped_classifier == ['fc.weight', 'fc.bias']
    x = x64()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), gc_model.forward_features(x), rtol=0, atol=0)


def test_mmpretrain_classifier_keeps_its_head(gc_model):
    sd = {('backbone.' + k.replace('.se.', '.context_block.')): v
          for k, v in gc_model.state_dict().items() if not k.startswith('fc.')}
    sd['head.fc.weight'], sd['head.fc.bias'] = gc_model.fc.weight, gc_model.fc.bias
    name, converted = convert_state_dict({'meta': {}, 'state_dict': sd})
    model = timm.create_model(name).eval()
    model.load_state_dict(converted, strict=True)
    x = x64()
    with torch.no_grad():
        torch.testing.assert_close(model(x), gc_model(x), rtol=0, atol=0)


@pytest.mark.parametrize('zoo_name', ['resnet50_gc_r4', 'resnet101_gc'])
def test_gcnet_depth_and_ratio_pick_the_model(zoo_name):
    sd = to_mmdet(meta_state_dict(zoo_name, num_classes=0))
    assert detect_layout(sd) == 'gcnet_mmdet'
    name, converted = convert_state_dict(sd)
    assert name == zoo_name
    assert set(converted) == set(meta_state_dict(zoo_name, num_classes=0))


def test_auto_detection(cbam_official):
    assert detect_layout(cbam_official) == 'cbam_official'
    assert detect_layout(official_checkpoint(cbam_official)) == 'cbam_official'
    assert detect_layout(to_bam_official(meta_state_dict('resnet50_bam'))) == 'bam_official'
    assert detect_layout(to_mmdet(meta_state_dict('resnet50_gc'))) == 'gcnet_mmdet'
    with pytest.raises(CheckpointError, match='plain ResNet.*init_from_resnet'):
        detect_layout({k: v for k, v in meta_state_dict('resnet50_gc').items() if '.se.' not in k})
    with pytest.raises(CheckpointError, match="already has gczoo's keys"):
        detect_layout(meta_state_dict('resnet50_gc'))


def test_convert_state_dict_strips_dataparallel_and_matches_the_model(cbam_model, cbam_official):
    assert all(k.startswith('module.') for k in cbam_official)
    name, converted = convert_state_dict(cbam_official, 'cbam_official')
    assert name == 'resnet50_cbam'
    assert list(converted) == list(cbam_model.state_dict())
    for k, v in cbam_model.state_dict().items():
        assert torch.equal(converted[k], v), k


def test_pre_041_checkpoints_without_num_batches_tracked_are_filled(cbam_official):
    sd = {k: v for k, v in cbam_official.items() if not k.endswith('num_batches_tracked')}
    from gczoo.models.convert import _convert
    _, name, converted, _, filled, _ = _convert(sd, 'auto', None)
    assert filled and all(k.endswith('num_batches_tracked') for k in filled)
    assert all(converted[k].dtype == torch.int64 for k in filled)


def test_unknown_key_is_listed_by_its_source_name(cbam_official):
    sd = dict(cbam_official)
    sd['module.layer1.0.cbam.ChannelGate.extra.weight'] = torch.zeros(3)
    sd['module.layer9.weight'] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        convert_state_dict(sd)
    msg = str(info.value)
    assert 'unexpected' in msg and 'layer1.0.cbam.ChannelGate.extra.weight' in msg and 'layer9.weight' in msg
    assert 'missing keys none' in msg


def test_shape_mismatch_and_missing_keys_are_listed(cbam_official):
    sd = dict(cbam_official)
    sd['module.layer2.1.cbam.ChannelGate.mlp.1.weight'] = torch.zeros(64, 512)  # reduction 8, not 16
    del sd['module.layer3.0.bn2.running_mean']
    with pytest.raises(CheckpointError) as info:
        convert_state_dict(sd)
    msg = str(info.value)
    assert 'layer2.1.cbam.ChannelGate.mlp.1.weight (-> layer2.1.se.channel_gate.fc1.weight)' in msg
    assert 'checkpoint (64, 512) vs model (32, 512)' in msg
    assert 'missing keys layer3.0.bn2.running_mean' in msg


def test_forcing_a_model_whose_keys_differ_lists_them(cbam_official):
    with pytest.raises(CheckpointError, match=r"does not fit resnet50_se.*missing keys layer1\.0\.se\.fc1.*"
                                              r"Its keys point to 'resnet50_cbam'"):
        convert_state_dict(cbam_official, model='resnet50_se')


def test_a_resnet_the_zoo_lacks_is_named():
    keys = {f'module.layer{s}.{b}.conv3.weight': torch.zeros(1)
            for s, n in zip((1, 2, 3, 4), (3, 4, 23, 3)) for b in range(n)}
    keys['module.layer1.0.cbam.ChannelGate.mlp.1.weight'] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"ResNet-101 \+ CBAM; gczoo has no such model \('resnet101_cbam'\)"):
        convert_state_dict(keys)
    del keys['module.layer3.22.conv3.weight']
    with pytest.raises(CheckpointError, match=r'not a standard ResNet.*\(3, 4, 22, 3\)'):
        convert_state_dict(keys)


def test_bad_arguments_name_themselves(tmp_path, cbam_official):
    with pytest.raises(ValueError, match='layout must be one of'):
        convert_state_dict(cbam_official, layout='timm')
    with pytest.raises(ValueError, match="model must be a gczoo model name.*'resnet50'"):
        convert_state_dict(cbam_official, model='resnet50')
    with pytest.raises(TypeError, match='state_dict must be a mapping'):
        convert_state_dict([1, 2])
    with pytest.raises(ValueError, match='out_path must end in .safetensors'):
        convert_checkpoint(tmp_path / 'a.pth', tmp_path / 'b.pth')
    assert set(LAYOUTS) == {'cbam_official', 'bam_official', 'gcnet_mmdet'}


def test_corrupt_truncated_and_missing_files(tmp_path, cbam_official):
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'\x00not a checkpoint' * 64)
    with pytest.raises(CheckpointError, match='garbage.pth.*not a readable PyTorch checkpoint'):
        read_state_dict(garbage)
    full = tmp_path / 'full.pth'
    torch.save({'state_dict': {k: cbam_official[k] for k in list(cbam_official)[:4]}}, full)
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(full.read_bytes()[:-200])
    with pytest.raises(CheckpointError, match='truncated.pth.*truncated or corrupt'):
        convert_checkpoint(truncated, tmp_path / 'x.safetensors')
    bad_st = tmp_path / 'bad.safetensors'
    bad_st.write_bytes(b'{"oops"')
    with pytest.raises(CheckpointError, match='bad.safetensors'):
        read_state_dict(bad_st)
    with pytest.raises(CheckpointError, match='does not exist'):
        read_state_dict(tmp_path / 'nope.pth')
    assert not (tmp_path / 'x.safetensors').exists()


class _Hook:  # stands in for mmengine's MessageHub in a checkpoint
    pass


@pytest.mark.parametrize('zip_format', [True, False])
def test_pickled_objects_in_meta_are_refused_and_named(tmp_path, zip_format):
    path = tmp_path / 'mmdet_v3.pth'
    ckpt = {'meta': {'hook_msgs': {'best_score': np.float64(0.39)}}, 'message_hub': _Hook(),
            'state_dict': {'backbone.conv1.weight': torch.zeros(1)}}
    torch.save(ckpt, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    msg = str(info.value)
    assert 'weights_only=True' in msg and "torch.save(ck['state_dict']" in msg
    assert 'numpy' in msg or '_Hook' in msg


def test_cli_writes_the_file_and_a_json_report(tmp_path, capsys, gc_model):
    src = tmp_path / 'det.pth'
    torch.save(mmdet_checkpoint(to_mmdet(gc_model.state_dict())), src)
    out, report_json = tmp_path / 'out' / 'gc.safetensors', tmp_path / 'report.json'
    assert cli_main(['convert', str(src), str(out), '--report-json', str(report_json)]) == 0
    assert out.is_file()
    printed = capsys.readouterr().out
    assert 'resnet50_gc' in printed and 'load with: timm.create_model(' in printed
    report = json.loads(report_json.read_text())
    assert report['model_name'] == 'resnet50_gc' and report['num_classes'] == 0 and len(report['dropped']) == 3


def test_cli_reports_errors_in_one_line(tmp_path, capsys):
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(b'junk')
    assert cli_main(['convert', str(bad), str(tmp_path / 'o.safetensors')]) == 2
    err = capsys.readouterr().err
    assert err.startswith('gczoo convert: error:') and 'bad.pth' in err


def test_cli_full_disk_leaves_no_half_written_file(tmp_path, capsys, gc_model, monkeypatch):
    """ENOSPC when the converted tensors reach the disk: one line, exit 2, no truncated .safetensors."""
    import errno
    import os
    import stat
    src = tmp_path / 'det.pth'
    torch.save(mmdet_checkpoint(to_mmdet(gc_model.state_dict())), src)
    real_fsync = os.fsync

    def full_disk(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, 'fsync', full_disk)
    out = tmp_path / 'out'
    assert cli_main(['convert', str(src), str(out / 'gc.safetensors')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('gczoo convert: error: No space left on device')
    assert 'gc.safetensors' in err and 'free some disk space' in err
    assert list(out.iterdir()) == []  # no temporary file, no truncated output
