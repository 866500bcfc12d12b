"""Build-only tests of every workflow factory, and FSL command lines without FSL."""

from types import SimpleNamespace

import numpy as np
import pytest

from qsmprep.io.bids import collect_subjects
from qsmprep.io.testing import make_megre_dataset
from qsmprep.workflows.base import init_single_subject_wf
from qsmprep.workflows.orientation import init_brainmask_wf, init_orientation_wf
from qsmprep.workflows.participant import derivatives_root, workflow_options
from qsmprep.workflows.registration import init_registration_wf

ORIENTS = [f'ori{i:02d}' for i in range(1, 8)]


def _subject(tmp_path, n):
    root = make_megre_dataset(tmp_path / 'bids', orientations=ORIENTS[:n])
    return root, collect_subjects(root)[0]


def _names(wf):
    return set(wf.list_node_names())


@pytest.mark.parametrize('n', [1, 2, 6])
def test_single_subject_graph_depends_on_orientation_count(tmp_path, n):
    root, subject = _subject(tmp_path, n)
    wf = init_single_subject_wf(subject, output_dir=tmp_path / 'out', bids_dir=root)
    names = _names(wf)
    assert sum(x.endswith('.invert') for x in names) == n        # TKD for every orientation
    assert sum(x.endswith('.invert_ilsqr') for x in names) == n  # and the iLSQR baseline
    assert sum(x.endswith('.ds_chimap_tkd') for x in names) == n
    assert sum(x.endswith('.ds_chimap_ilsqr') for x in names) == n
    assert ('multi_orientation_wf.multi_orientation' in names) == (n >= 2)
    assert sum(x.startswith('apparent_') for x in names) == (n if n >= 6 else 0)
    assert sum(x.endswith('.ds_apparent') for x in names) == (n if n >= 6 else 0)
    assert ('multi_orientation_wf.ds_chi33' in names) == (n >= 6)
    assert ('multi_orientation_wf.ds_cosmos' in names) == (n >= 2)
    # the reference orientation gets no transform file, the others one each
    assert sum(x.endswith('.ds_xfm') for x in names) == (n - 1 if n >= 2 else 0)
    # one sub-workflow of sinks and one of resampling per orientation
    assert sum(x.startswith('ds_acq_') and x.endswith('.ds_localfield') for x in names) == n
    assert sum(x.endswith('_wf.to_reference') for x in names) == (n if n >= 2 else 0)
    wf._create_flat_graph()  # connections are valid (nipype checks fields here)


def test_sinks_write_bids_names(tmp_path):
    root, subject = _subject(tmp_path, 6)
    out = tmp_path / 'out'
    wf = init_single_subject_wf(subject, output_dir=out, bids_dir=root)
    paths = {wf.get_node(n).inputs.out_path for n in wf.list_node_names()
             if n.split('.')[-1].startswith('ds_')}
    anat = out / 'sub-01' / 'anat'
    assert str(anat / 'sub-01_acq-ori01_desc-tkd_Chimap.nii.gz') in paths
    assert str(anat / 'sub-01_space-ori01_desc-chi33_Chimap.nii.gz') in paths
    assert str(anat / 'sub-01_from-ori02_to-ori01_mode-image_xfm.txt') in paths
    meta = wf.get_node('multi_orientation_wf.ds_chi33').inputs.metadata
    assert meta['Units'] == 'ppm' and meta['SkullStripped'] is True
    assert meta['SpatialReference'].startswith('bids:raw:sub-01/anat/')
    tkd = wf.get_node('ds_acq_ori01_wf.ds_chimap_tkd').inputs.metadata
    assert np.allclose(tkd['B0_dir'], subject.orientations[0].b0_direction)
    assert tkd['EchoTime'] == list(subject.orientations[0].echo_times)
    assert str(anat / 'sub-01_acq-ori01_desc-ilsqr_Chimap.nii.gz') in paths
    ilsqr = wf.get_node('ds_acq_ori01_wf.ds_chimap_ilsqr').inputs.metadata
    assert ilsqr['Units'] == 'ppm' and 'lambda 0.01' in ilsqr['EstimationAlgorithm']
    assert 'TKD (threshold 0.15)' in tkd['EstimationAlgorithm']


def test_inversion_choice(tmp_path):
    root, subject = _subject(tmp_path, 1)
    wf = init_single_subject_wf(subject, output_dir=tmp_path / 'out', bids_dir=root,
                                inversions=('ilsqr',))
    names = _names(wf)
    assert not any(x.endswith(('.ds_chimap_tkd', '.invert')) for x in names)
    node = wf.get_node('orientation_acq_ori01_wf').get_node('invert_ilsqr')
    assert node.inputs.method == 'ilsqr'
    wf._create_flat_graph()
    assert workflow_options(None)['inversions'] == ('tkd', 'ilsqr')  # default: both
    assert workflow_options(SimpleNamespace(inversions=['ilsqr']))['inversions'] == ('ilsqr',)
    for bad in ((), ('tkd', 'tkd'), ('medi',)):
        with pytest.raises(ValueError, match='inversions'):
            init_orientation_wf(echo_times=(0.004,), field_strength=3.0, b0_direction=(0, 0, 1),
                                inversions=bad)


def test_orientation_and_mask_factories():
    wf = init_orientation_wf(echo_times=(0.004, 0.008), field_strength=3.0,
                             b0_direction=(0, 0, 1), mask_method='python')
    assert {'stack_echoes', 'unwrap', 'combine_echoes', 'bgremoval', 'invert',
            'brainmask_wf.python_bet', 'erode_mask'} <= _names(wf)
    assert wf.get_node('erode_mask').inputs.voxels == 2  # the thesis default
    assert wf.get_node('bgremoval').inputs.method == 'vsharp'  # default background removal
    b0 = (0.0, 0.6, 0.8)
    for method in ('ismv', 'pdf', 'lbv', 'resharp'):
        other = init_orientation_wf(echo_times=(0.004, 0.008), field_strength=3.0,
                                    b0_direction=b0, mask_method='python', bgremoval=method)
        node = other.get_node('bgremoval')
        assert node.inputs.method == method and node.inputs.b0_direction == list(b0)
    with pytest.raises(ValueError, match='background removal'):
        init_orientation_wf(echo_times=(0.004,), field_strength=3.0, b0_direction=b0,
                            bgremoval='sharp')
    user = init_brainmask_wf(method='user')
    assert _names(user) == {'inputnode', 'outputnode'}
    with pytest.raises(ValueError, match='mask method'):
        init_brainmask_wf(method='synthstrip')


def test_fsl_command_lines_without_fsl(tmp_path):
    mag = tmp_path / 'mag.nii.gz'
    ref = tmp_path / 'ref.nii.gz'
    mag.write_bytes(b'')
    ref.write_bytes(b'')
    bet_wf = init_brainmask_wf(method='bet')
    bet = bet_wf.get_node('bet').interface
    bet.inputs.in_file = str(mag)
    cmd = bet.cmdline
    assert cmd.startswith('bet ') and ' -m ' in f'{cmd} ' and '-f 0.50' in cmd
    reg = init_registration_wf(method='flirt').get_node('flirt').interface
    reg.inputs.in_file = str(mag)
    reg.inputs.reference = str(ref)
    cmd = reg.cmdline
    assert cmd.startswith('flirt ')
    for part in ('-dof 6', '-searchrx -90 90', '-searchry -90 90', '-searchrz -90 90',
                 '-cost mutualinfo', '-omat '):
        assert part in cmd, part
    with pytest.raises(ValueError, match='registration'):
        init_registration_wf(method='ants')


def test_auto_options_pick_python_fallbacks_without_fsl(monkeypatch):
    monkeypatch.setattr('shutil.which', lambda name: None)
    opts = workflow_options(None)
    assert opts['mask_method'] == 'python' and opts['registration'] == 'sitk'
    monkeypatch.setattr('shutil.which', lambda name: f'/opt/fsl/bin/{name}')
    opts = workflow_options(None)
    assert opts['mask_method'] == 'bet' and opts['registration'] == 'flirt'


def test_derivatives_root_contains_pipeline_name(tmp_path):
    assert derivatives_root(tmp_path / 'derivatives' / 'qsmprep').name == 'qsmprep'
    assert derivatives_root(tmp_path / 'results') == (tmp_path / 'results' / 'qsmprep').absolute()


def test_single_step_solver_resamples_the_total_fields(tmp_path):
    """--multi-solver single-step feeds the registered total fields to the multi-orientation
    node; the closed form does not build that branch at all."""
    root, subject = _subject(tmp_path, 6)
    closed = _names(init_single_subject_wf(subject, output_dir=tmp_path / 'o1', bids_dir=root))
    single = init_single_subject_wf(subject, output_dir=tmp_path / 'o2', bids_dir=root,
                                    multi_solver='single-step')
    names = _names(single)
    assert not any('to_reference_total' in n for n in closed)
    assert sum('to_reference_total' in n for n in names) == 6
    multi = single.get_node('multi_orientation_wf.multi_orientation')
    assert multi.inputs.solver == 'single-step'
    edges = {(u.name, v.name) for u, v in
             single.get_node('multi_orientation_wf')._graph.edges()}
    assert ('merge_total_fields', 'multi_orientation') in edges
    assert not closed & {'multi_orientation_wf.merge_total_fields'}
