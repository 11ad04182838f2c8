"""Model-name validity in one place (``gczoo.models.registry``): every job's unknown-name error is the
resolver's one message, as timm's ``_registry`` decides what a name is."""
import pytest

import gczoo  # noqa: F401  (registers the zoo)
from gczoo.errors import CheckpointError, UsageError
from gczoo.models import ZOO_MODELS, resolve_model_name
from gczoo.models.registry import check_architecture, close_model_names, zoo_model_names


def test_names_split_as_timm_splits_them():
    name = resolve_model_name('resnet50_gc.a1_in1k_identity')
    assert (name.source, name.architecture, name.tag) == (None, 'resnet50_gc', 'a1_in1k_identity')
    assert resolve_model_name('resnet50').tag is None  # any timm model
    folder = resolve_model_name('hf-hub:gczoo/resnet50_gc.ft_in1k')
    assert folder.is_folder and (folder.source, folder.location, folder.architecture) == (
        'hf-hub', 'gczoo/resnet50_gc.ft_in1k', None)
    assert resolve_model_name('local-dir:/some/dir').location == '/some/dir'
    assert sorted(zoo_model_names()) == sorted(ZOO_MODELS)


def test_unknown_name_is_one_usage_error_with_close_matches_and_gczoo_list():
    with pytest.raises(UsageError) as info:
        resolve_model_name('resnet50_gx', what='--model')
    message = str(info.value)
    assert message.startswith("--model: unknown model 'resnet50_gx'")
    assert 'resnet50_gc' in message.split('closest: ')[1].split('.')[0]  # the zoo's close names first
    assert '`gczoo list`' in message and 'local-dir:DIR' in message and '\n' not in message
    assert isinstance(info.value, ValueError)  # the CLI runner's one-line, exit-2 errors
    assert close_model_names('resnet18_gcc')[0] == 'resnet18_gc'


def test_zoo_only_tags_folders_and_bad_input():
    with pytest.raises(UsageError, match="MODEL: unknown gczoo model 'resnet50'; closest: .*resnet50_gc"):
        resolve_model_name('resnet50', what='MODEL', zoo=ZOO_MODELS)
    with pytest.raises(UsageError, match=r"'resnet50_gc' has no pretrained tag 'nope'; its tags: resnet50_gc\.a1"):
        resolve_model_name('resnet50_gc.nope')
    with pytest.raises(UsageError, match='names a weights folder'):
        resolve_model_name('local-dir:x', folders=False)
    with pytest.raises(UsageError, match="unknown model 'ftp:resnet50'"):
        resolve_model_name('ftp:resnet50')
    for bad in ('', '  ', None, 3):
        with pytest.raises(UsageError, match='a model name is needed'):
            resolve_model_name(bad)


def test_config_architecture_check():
    check_architecture('resnet18_gc', 'config.json')
    with pytest.raises(CheckpointError, match=r"'x/config\.json' names architecture 'resnet18_gcx', which is not a "
                                              r"registered timm model .*closest: resnet18_gc"):
        check_architecture('resnet18_gcx', "'x/config.json'")


@pytest.mark.parametrize('call', ['complexity', 'cards', 'hub_folder', 'zoo', 'evaluate', 'train', 'publish',
                                  'visualize', 'pretrained'])
def test_every_job_uses_the_one_message(call, tmp_path):
    """The nine places that check a model name all raise the resolver's error."""
    import argparse

    bad = 'resnet50_gx'

    def complexity():
        from gczoo.complexity import count_complexity
        count_complexity(bad)

    def cards():
        from gczoo.cards.measured import zoo_row
        zoo_row(bad)

    def hub_folder():
        from gczoo.models import create_model
        create_model(bad)

    def zoo():
        from gczoo.models import create_zoo_model
        create_zoo_model(bad)

    def evaluate():
        from gczoo.evaluate import create_eval_model
        create_eval_model(bad, pretrained=True)

    def train():
        from gczoo.train.build import create_train_model
        create_train_model(argparse.Namespace(model=bad), num_classes=2)

    def publish():
        from gczoo.hub import load_training_output
        (tmp_path / 'w.safetensors').write_bytes(b'')
        load_training_output(tmp_path / 'w.safetensors', model_name=bad)

    def visualize():
        from gczoo.visualize.loading import load_model
        load_model(bad)

    def pretrained():
        import timm
        from gczoo.models import init_from_resnet
        init_from_resnet(timm.create_model('resnet18_gc'), bad)

    with pytest.raises(UsageError, match=rf"unknown (gczoo )?model '{bad}'.*closest: .*resnet50_gc.*`gczoo list`"):
        locals()[call]()


@pytest.mark.parametrize('bad, why, first', [
    ('ResNet50_GC', None, 'resnet50_gc'),  # difflib was case-sensitive: resnet50_gc came fifth
    (' resnet50_gc ', 'it has spaces around it', 'resnet50_gc'),
    ('timm/resnet50_gc', 'a Hub repo is written "hf-hub:timm/resnet50_gc"', 'resnet50_gc'),
    ('resnet50_*', "timm.list_models('resnet50_*') lists the names it matches", None),
])
def test_hostile_names_say_what_is_wrong_and_the_right_name_first(bad, why, first):
    with pytest.raises(UsageError) as info:
        resolve_model_name(bad)
    message = str(info.value)
    assert message.startswith(f'--model: unknown model {bad!r}') and '\n' not in message
    if why:
        assert why in message
    if first:
        assert message.split('closest: ')[1].startswith(first)


@pytest.mark.parametrize('bad', ['hf-hub:', 'local-dir:', 'local-dir:  '])
def test_a_prefix_with_nothing_after_it_is_refused(bad):
    # 'local-dir: ' used to resolve to the folder ' '; 'hf-hub:' was 'unknown model'
    with pytest.raises(UsageError, match="names nothing after '(hf-hub|local-dir):'; "
                                         "write (hf-hub:ORG/REPO|local-dir:DIR)"):
        resolve_model_name(bad)


def test_a_timm_model_that_is_no_zoo_model_still_resolves_where_timm_models_are_allowed():
    assert resolve_model_name('resnet50.a1_in1k').tag == 'a1_in1k'
    with pytest.raises(UsageError, match="unknown gczoo model 'resnet50'"):
        resolve_model_name('resnet50', zoo=ZOO_MODELS)


@pytest.mark.parametrize('bad', ['hf-hub:bad repo', 'hf-hub:org/re po@main', 'hf-hub:-org/repo'])
def test_an_invalid_hub_repo_id_is_the_resolvers_one_line(bad):
    # hostile-user pass: create_model('hf-hub:bad repo') was huggingface_hub's HFValidationError, naming no flag
    from gczoo.models import create_model
    with pytest.raises(UsageError, match=r"^--model: .* names no valid Hub repo \(hf-hub:ORG/REPO\[@revision\]\)"):
        resolve_model_name(bad)
    with pytest.raises(UsageError, match=r'^model_name: .* names no valid Hub repo'):
        create_model(bad, pretrained=True)
    assert resolve_model_name('hf-hub:timm/resnet50.a1_in1k@main').location == 'timm/resnet50.a1_in1k@main'


@pytest.mark.parametrize('name, family', [('ccnet_r50_d8', 'segmentation model: gczoo eval-seg'),
                                          ('gcnet_r101_d8.ade20k_512x512_160k', 'segmentation model'),
                                          ('i3d_r50_nl', 'video model: gczoo eval-video')])
def test_a_video_or_segmentation_name_says_what_to_use(name, family):
    """They are gczoo's models but not timm's: an image job given one points to their commands (it said
    'unknown model ... closest: lcnet_150')."""
    with pytest.raises(UsageError, match=family):
        resolve_model_name(name, what='--model')
