"""Brain-mask workflow: BET masks (FSL or Python port) are refined, user masks are not."""

from __future__ import annotations

import os
import sys

import nibabel as nib
import numpy as np
import pytest

from qsmprep.interfaces.masking import RefineMask
from qsmprep.workflows.orientation import init_brainmask_wf, init_orientation_wf

SHAPE = (36, 36, 36)

# A fake FSL bet whose mask overshoots into the skull, as BET often does on GRE magnitude:
# a ball of radius 15 voxels around the array centre, whatever the image.
FAKE_BET = '''\
#!{python}
import sys
import nibabel as nib
import numpy as np
args = sys.argv[1:]
src, out = args[0], args[1]
img = nib.load(src)
r = np.sqrt(((np.indices(img.shape) - 17.5) ** 2).sum(0))
mask = (r < 15).astype('uint8')
stem = out[:-7] if out.endswith('.nii.gz') else out
nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj) * mask, img.affine), stem + '.nii.gz')
nib.save(nib.Nifti1Image(mask, img.affine), stem + '_mask.nii.gz')
'''


def _head(path):
    """First-echo magnitude of a spherical head: brain + CSF (r < 12), dark skull
    (12 ≤ r < 16), scalp; Rician noise σ = 0.01."""
    r = np.sqrt(((np.indices(SHAPE) - 17.5) ** 2).sum(0))
    clean = np.select([r < 10, r < 12, r < 16, r < 17.5], [0.7, 0.95, 0.0, 0.8], 0.0)
    noise = np.random.default_rng(0).normal(0.0, 0.01, (2, *SHAPE))
    mag = np.hypot(clean + noise[0], noise[1]).astype('float32')
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(mag, affine), path)
    return r


@pytest.fixture
def fake_bet(tmp_path, monkeypatch):
    fsldir = tmp_path / 'fsl'
    (fsldir / 'bin').mkdir(parents=True)
    exe = fsldir / 'bin' / 'bet'
    exe.write_text(FAKE_BET.format(python=sys.executable))
    exe.chmod(0o755)
    monkeypatch.setenv('FSLDIR', str(fsldir))
    monkeypatch.setenv('FSLOUTPUTTYPE', 'NIFTI_GZ')
    monkeypatch.setenv('PATH', f'{fsldir / "bin"}{os.pathsep}{os.environ.get("PATH", "")}')
    return exe


def _load(path):
    return np.asanyarray(nib.load(str(path)).dataobj) > 0


def test_fsl_bet_mask_loses_its_skull_rim(tmp_path, fake_bet):
    mag = tmp_path / 'mag.nii.gz'
    r = _head(mag)
    wf = init_brainmask_wf(method='bet')
    wf.base_dir = str(tmp_path / 'work')
    wf.inputs.inputnode.magnitude = str(mag)
    graph = wf.run(plugin='Linear')
    nodes = {n.name: n for n in graph.nodes()}
    bet_mask = _load(nodes['bet'].result.outputs.mask_file)
    refined = _load(nodes['refine_mask'].result.outputs.out_mask)
    assert (bet_mask & (r >= 12)).sum() > 1000          # the fake BET reaches into the skull
    assert np.array_equal(refined, r < 12)              # brain + CSF, nothing of the skull


def test_refinement_off_passes_the_bet_mask_through():
    wf = init_brainmask_wf(method='bet', mask_threshold=0)
    assert set(wf.list_node_names()) == {'inputnode', 'bet', 'outputnode'}
    wf = init_brainmask_wf(method='bet', mask_threshold=0.3)
    assert wf.get_node('refine_mask').inputs.threshold == 0.3
    edges = {(u.name, v.name) for u, v in wf._graph.edges}
    assert {('bet', 'refine_mask'), ('inputnode', 'refine_mask'),
            ('refine_mask', 'outputnode')} <= edges


def test_threshold_reaches_the_python_bet_node():
    wf = init_brainmask_wf(method='python', mask_threshold=0.3)
    assert wf.get_node('python_bet').inputs.threshold == 0.3
    assert init_brainmask_wf().get_node('python_bet').inputs.threshold == 0.2
    owf = init_orientation_wf(echo_times=(0.004, 0.008), field_strength=3.0,
                              b0_direction=(0, 0, 1), mask_method='python', mask_threshold=0.35)
    assert owf.get_node('brainmask_wf.python_bet').inputs.threshold == 0.35


def test_user_masks_are_never_refined():
    wf = init_brainmask_wf(method='user', mask_threshold=0.5)
    assert set(wf.list_node_names()) == {'inputnode', 'outputnode'}


@pytest.mark.parametrize('value', [-0.1, 1.0, 2])
def test_invalid_threshold_is_rejected(value):
    with pytest.raises(ValueError, match='mask_threshold'):
        init_brainmask_wf(method='python', mask_threshold=value)


def test_refine_interface(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mag = tmp_path / 'mag.nii.gz'
    r = _head(mag)
    affine = nib.load(str(mag)).affine
    nib.save(nib.Nifti1Image((r < 15).astype('uint8'), affine), tmp_path / 'mask.nii.gz')
    res = RefineMask(in_mask=str(tmp_path / 'mask.nii.gz'), in_file=str(mag)).run()
    assert np.array_equal(_load(res.outputs.out_mask), r < 12)
    # a mask on another grid is an error that names both files
    shifted = affine.copy()
    shifted[:3, 3] += 10.0
    nib.save(nib.Nifti1Image((r < 15).astype('uint8'), shifted), tmp_path / 'other.nii.gz')
    with pytest.raises(ValueError, match='not on the grid'):
        RefineMask(in_mask=str(tmp_path / 'other.nii.gz'), in_file=str(mag)).run()
