"""ErodeMask (qsmprep.interfaces.masking): erosion in voxels or by a ball in mm."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from qsmprep.interfaces.masking import ErodeMask

VS = np.array([1.5, 1.5, 2.0])            # anisotropic, as in the 7 T preset
SHAPE = (40, 40, 32)
R_BALL = 20.0                              # mm


def _ball(path):
    """Ball of radius 20 mm on an anisotropic LAS grid; returns the distance (mm) of each
    voxel centre from the ball centre."""
    c = (np.array(SHAPE) - 1) / 2
    d = np.sqrt(sum((((np.indices(SHAPE)[i] - c[i]) * VS[i]) ** 2) for i in range(3)))
    affine = np.diag([-VS[0], VS[1], VS[2], 1.0])
    nib.save(nib.Nifti1Image((d <= R_BALL).astype(np.uint8), affine), path)
    return d


def _run(tmp_path, monkeypatch, **inputs):
    monkeypatch.chdir(tmp_path)
    src = tmp_path / 'mask.nii.gz'
    d = _ball(src)
    res = ErodeMask(in_file=str(src), **inputs).run()
    return np.asanyarray(nib.load(res.outputs.out_mask).dataobj) > 0, d


@pytest.mark.parametrize('radius', [2.0, 3.0, 4.0])
def test_erosion_by_a_ball_in_mm_on_anisotropic_voxels(tmp_path, monkeypatch, radius):
    """Eroding a ball of radius R by a ball of radius r keeps every voxel within R − r of
    the centre (triangle inequality) and nothing beyond R − r + the largest voxel size: the
    same distance in mm in-plane (1.5 mm voxels) and through-plane (2 mm voxels)."""
    out, d = _run(tmp_path, monkeypatch, radius_mm=radius)
    assert out[d <= R_BALL - radius].all()
    assert not out[d > R_BALL - radius + VS.max()].any()


def test_erosion_in_voxels_is_unchanged_by_default(tmp_path, monkeypatch):
    """Without ``radius_mm``, 2 six-connected erosions: along x (1.5 mm voxels) 3 mm, along
    z (2 mm voxels) 4 mm are removed — the voxel count, not mm."""
    out, d = _run(tmp_path, monkeypatch)
    c = (np.array(SHAPE) - 1) / 2
    ix = np.nonzero(out[:, int(c[1]), int(c[2])])[0]
    iz = np.nonzero(out[int(c[0]), int(c[1]), :])[0]
    full_x = np.nonzero(d[:, int(c[1]), int(c[2])] <= R_BALL)[0]
    full_z = np.nonzero(d[int(c[0]), int(c[1]), :] <= R_BALL)[0]
    assert ix.size == full_x.size - 4 and iz.size == full_z.size - 4


def test_radius_zero_keeps_the_mask_and_negative_is_an_error(tmp_path, monkeypatch):
    out, d = _run(tmp_path, monkeypatch, radius_mm=0.0)
    assert np.array_equal(out, d <= R_BALL)
    with pytest.raises(ValueError, match='radius_mm'):
        _run(tmp_path, monkeypatch, radius_mm=-1.0)
