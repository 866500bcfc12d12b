"""The BackgroundRemoval interface: thin over qsmprep.numerics.bgremoval (voxel size from the
affine, method options passed through, outputs written as NIfTI)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from qsmprep.interfaces.phase import BackgroundRemoval
from qsmprep.numerics.bgremoval import METHODS, pdf
from qsmprep.utils.images import load, save


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp('bgrm')
    vs = (1.5, 1.5, 2.0)
    shape = (28, 28, 21)
    X = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * v for n, v in zip(shape, vs,
                                                                     strict=True)],
                    indexing='ij')
    mask = X[0]**2 + X[1]**2 + X[2]**2 <= 16.0**2
    rng = np.random.default_rng(0)
    field = (0.01 * rng.standard_normal(shape) + 0.002 * X[0] * X[2]).astype(np.float32)
    affine = np.diag([*vs, 1.0])
    affine[:3, 3] = (-20.0, 10.0, 5.0)
    return {'field': field, 'mask': mask, 'vs': vs, 'affine': affine,
            'in_file': save(field, affine, str(d / 'total.nii')),
            'in_mask': save(mask, affine, str(d / 'mask.nii'))}


@pytest.mark.parametrize('method', list(METHODS))
def test_interface_matches_the_numerics(inputs, method, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if method == 'pdf':  # the default 40-voxel padding is slow on a test grid
        monkeypatch.setitem(METHODS, 'pdf', functools.partial(pdf, padding=4, maxit=20))
    b0 = [0.0, 0.6, 0.8]
    node = BackgroundRemoval(in_file=inputs['in_file'], in_mask=inputs['in_mask'],
                             method=method, b0_direction=b0, radii=[6.0, 3.0],
                             threshold=0.04)
    res = node.run()
    local, affine, _ = load(res.outputs.out_file)
    final = load(res.outputs.out_mask)[0] > 0
    np.testing.assert_allclose(affine, inputs['affine'])
    kw = {'vsharp': {'radii': [6.0, 3.0], 'threshold': 0.04}, 'vsharp-ls': {'radii': [6.0, 3.0]},
          'pdf': {'b0_direction': b0}}.get(method, {})
    want, want_mask = METHODS[method](inputs['field'], inputs['mask'], voxel_size=inputs['vs'],
                                      **kw)
    np.testing.assert_array_equal(final, want_mask)
    np.testing.assert_allclose(local, want, rtol=0, atol=1e-6 * np.abs(want).max())
    assert (local[~final] == 0).all()


def test_option_reaches_the_workflow(tmp_path):
    """--bgremoval: parser → Settings (TOML round trip) → workflow_options."""
    from qsmprep.cli.config import Settings
    from qsmprep.cli.parser import build_parser
    from qsmprep.workflows.participant import workflow_options

    parser = build_parser()
    default = Settings.from_namespace(parser.parse_args(['/b', '/o', 'participant']))
    assert default.bgremoval == 'vsharp' and workflow_options(default)['bgremoval'] == 'vsharp'
    for method in METHODS:
        s = Settings.from_namespace(parser.parse_args(['/b', '/o', 'participant',
                                                       '--bgremoval', method]))
        assert Settings.from_toml(s.to_toml()).bgremoval == method
        assert workflow_options(s)['bgremoval'] == method
    with pytest.raises(SystemExit):
        parser.parse_args(['/b', '/o', 'participant', '--bgremoval', 'sharp'])


def test_sidecars_name_the_method(tmp_path):
    from qsmprep.io.bids import collect_subjects
    from qsmprep.io.testing import make_megre_dataset
    from qsmprep.workflows.base import init_single_subject_wf

    root = make_megre_dataset(tmp_path / 'bids', orientations=['ori01'])
    subject = collect_subjects(root)[0]
    for method, name in (('vsharp', 'V-SHARP'), ('lbv', 'LBV'), ('pdf', 'PDF')):
        wf = init_single_subject_wf(subject, output_dir=tmp_path / 'out', bids_dir=root,
                                    bgremoval=method)
        tag = next(n for n in wf.list_node_names() if n.endswith('.ds_localfield'))
        meta = wf.get_node(tag).inputs.metadata
        assert meta['Description'] == f'Local field after {name}'
        assert meta['EstimationAlgorithm'].startswith(name + ' (')
        mask_tag = tag.replace('.ds_localfield', '.ds_localmask')
        assert wf.get_node(mask_tag).inputs.metadata['Description'].startswith(name)
        node = next(n for n in wf.list_node_names() if n.endswith('.bgremoval'))
        assert wf.get_node(node).inputs.method == method


@pytest.mark.parametrize(('method', 'text', 'ref'), [
    ('vsharp', 'V-SHARP (TSVD threshold 0.05)', 'Li W, Wu B, Liu C'),
    ('ismv', 'iSMV', 'Wen Y'), ('pdf', 'projection onto dipole fields', 'Liu T, et al. A novel'),
    ('lbv', 'the Laplacian boundary value', 'Zhou D'), ('resharp', 'RESHARP', 'Sun H')])
def test_citation_names_the_method(method, text, ref):
    from qsmprep.cli.config import Settings
    from qsmprep.cli.parser import build_parser
    from qsmprep.reports.boilerplate import boilerplate
    from qsmprep.workflows.participant import workflow_options

    ns = build_parser().parse_args(['/b', '/o', 'participant', '--bgremoval', method])
    out = boilerplate(workflow_options(Settings.from_namespace(ns)))
    assert f'Background fields were removed with {text}' in out.replace('\n', ' ')
    assert ref in out
    if method != 'vsharp':
        assert 'V-SHARP' not in out
