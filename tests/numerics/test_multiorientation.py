"""Single-step COSMOS/STI (qsmprep.numerics.multiorientation) against the forward model."""

import numpy as np
import pytest

from qsmprep.numerics.bgremoval import vsharp
from qsmprep.numerics.forward import dipole_forward
from qsmprep.numerics.metrics import nrmse, regional_regression
from qsmprep.numerics.multiorientation import (
    default_smv_radii,
    single_step_inversion,
    solve_multi_orientation,
)
from qsmprep.numerics.sti import cosmos, fit_sti, sti_forward

VS = 2.0
N = 64


def _directions(n, seed=1):
    """The reference B0 (z) and n - 1 head tilts of 20-40 degrees about random axes."""
    rng = np.random.default_rng(seed)
    b = [[0.0, 0.0, 1.0]]
    for _ in range(n - 1):
        t, a = np.deg2rad(rng.uniform(20, 40)), rng.uniform(0, 2 * np.pi)
        b.append([np.sin(t) * np.cos(a), np.sin(t) * np.sin(a), np.cos(t)])
    return np.array(b)


def _grid():
    x = (np.indices((N, N, N)) - N / 2 + 0.5) * VS
    return x, np.sqrt((x ** 2).sum(0))


@pytest.fixture(scope='module')
def phantom():
    """Brain-like ellipsoid (mm) with blobs of several χ (the 'nuclei') and smooth texture,
    plus a strong source outside the mask (an air-filled cavity)."""
    x, _ = _grid()
    brain = (x[0] / 34) ** 2 + (x[1] / 38) ** 2 + (x[2] / 30) ** 2 <= 1
    labels = np.zeros(brain.shape, np.int16)
    chi = 0.01 * np.sin(x[0] / 9) * np.cos(x[1] / 11)
    centres = [(-12, 8, 0), (12, 8, 0), (-10, -10, 6), (10, -10, -6), (0, 0, -14), (0, 20, 8)]
    values = [0.05, 0.09, 0.13, 0.17, -0.04, 0.11]
    for i, (c, v) in enumerate(zip(centres, values, strict=True)):
        roi = ((x[0] - c[0]) ** 2 + (x[1] - c[1]) ** 2 + (x[2] - c[2]) ** 2) <= 6.0 ** 2
        chi = np.where(roi, v, chi)
        labels[roi] = i + 1
    chi = np.where(brain, chi, 0.0)
    return {'brain': brain, 'chi': chi, 'labels': labels}


def _fields(chi, b, pad=24):
    return np.stack([dipole_forward(chi, VS, bi, padding=pad) for bi in b], -1)


def _air_field(b, centre=(0.0, 0.0, -44.0), radius=8.0, dchi=9.4):
    """Exact field (ppm) of a uniformly magnetised sphere of air below the brain (14 mm
    from it), outside the sphere: ``(Δχ/3)(a/r)³(3cos²θ − 1)`` — harmonic in the brain."""
    x, _ = _grid()
    r = x - np.asarray(centre, float)[:, None, None, None]
    d = np.sqrt((r ** 2).sum(0))
    out = []
    for bi in b:
        c = np.tensordot(bi, r, axes=1) / d
        out.append(dchi / 3.0 * (radius / d) ** 3 * (3 * c * c - 1))
    return np.stack(out, -1)


def test_default_radii_scale_with_the_voxel():
    assert default_smv_radii(1.0) == (12.0, 4.0)
    assert default_smv_radii((1.0, 1.0, 3.0)) == (18.0, 9.0)
    assert default_smv_radii(2.0) == (12.0, 6.0)


def test_background_from_outside_sources_is_ignored(phantom):
    """A harmonic background (field of a source outside the mask) does not change χ."""
    b = _directions(4)
    m = phantom['brain']
    loc = _fields(phantom['chi'], b)
    bg = _air_field(b)
    assert np.sqrt((bg[m] ** 2).mean()) > 3 * np.sqrt((loc[m] ** 2).mean())
    kw = dict(voxel_size=VS, mask=m, radii=(12.0, 6.0), dtype=np.float64)
    x1, _ = single_step_inversion(loc, b, **kw)
    x2, _ = single_step_inversion(loc + bg, b, **kw)
    assert nrmse(x2, x1, m) < 5.0


def test_cosmos_recovers_chi_and_beats_vsharp_closed_form(phantom):
    """Noise-free total fields (local + background): the single-step COSMOS recovers χ in
    the whole mask, with the nuclei on the identity line; V-SHARP + closed form does not."""
    b = _directions(4)
    m, chi = phantom['brain'], phantom['chi']
    total = _fields(chi, b) + _air_field(b)
    x, info = single_step_inversion(total, b, voxel_size=VS, mask=m, radii=(12.0, 6.0),
                                    dtype=np.float64)
    assert info.iterations > 1 and info.residual_history[-1] < info.residual_history[0]
    err = nrmse(x, chi, m, demean=True)
    fit = regional_regression(x, chi, phantom['labels'], mask=m)
    loc = np.stack([vsharp(total[..., i], m, voxel_size=VS)[0] for i in range(len(b))], -1)
    fm = vsharp(total[..., 0], m, voxel_size=VS)[1]
    ref = cosmos(loc, b, voxel_size=VS, mask=fm)
    err_ref = nrmse(ref, chi, fm, demean=True)
    assert err < 30.0, err
    assert err < 0.75 * err_ref, (err, err_ref)
    assert 0.95 < fit.slope < 1.05, fit.slope


def test_sti_single_step_recovers_the_tensor(phantom):
    """Anisotropic tensor (isotropic part + a fibre-like deviatoric part) from 7 tilted
    orientations (local fields): χ33 and MMS within the mask, slopes of the nuclei near 1."""
    m, chi = phantom['brain'], phantom['chi']
    x, _ = _grid()
    T = np.zeros((*m.shape, 6))
    T[..., 0] = T[..., 3] = T[..., 5] = chi
    fibre = m & (np.abs(x[2]) < 6) & (np.abs(x[0]) > 16)
    T[..., 1] = 0.01 * fibre  # chi12: anisotropy in the x-y plane
    T[..., 5] += -0.01 * fibre
    b = _directions(7)
    fields = sti_forward(T, b, voxel_size=VS)
    out = solve_multi_orientation(fields, b, voxel_size=VS, mask=m, radii=(12.0, 6.0),
                                  dtype=np.float64)
    chi33 = np.where(m, T[..., 5], 0)
    mms = np.where(m, T[..., [0, 3, 5]].mean(-1), 0)
    assert nrmse(out["chi33"], chi33, m, demean=True) < 35.0
    assert nrmse(out["mms"], mms, m, demean=True) < 35.0
    for key, ref in (('chi33', chi33), ('mms', mms)):
        slope = regional_regression(out[key], ref, phantom['labels'], mask=m).slope
        assert 0.9 < slope < 1.1, (key, slope)
    assert abs(out["cosmos"][m].mean()) < 1e-9 and abs(out["mms"][m].mean()) < 1e-9
    assert out['report']['sti']['iterations'] >= 1
    assert np.all(out['tensor'][~m] == 0)


def test_closed_form_solver_is_the_sti_module(phantom):
    """solver='closed-form' returns the per-k closed forms, demeaned in the mask."""
    m = phantom['brain']
    b = _directions(6)
    f = _fields(phantom['chi'], b) * m[..., None]
    out = solve_multi_orientation(f, b, voxel_size=VS, mask=m, solver='closed-form',
                                  dtype=np.float64)
    c = cosmos(f, b, voxel_size=VS, mask=m)
    c[m] -= c[m].mean()
    np.testing.assert_allclose(out['cosmos'], np.where(m, c, 0), atol=1e-10)
    fit = fit_sti(f, b, voxel_size=VS, mask=m, tikhonov=0.3, regularizer='anisotropy')
    mms = fit.mms - fit.mms[m].mean()
    np.testing.assert_allclose(out['mms'], np.where(m, mms, 0), atol=1e-10)


def test_input_errors(phantom):
    m = phantom['brain']
    f = np.zeros((*m.shape, 2))
    with pytest.raises(ValueError, match='sti needs at least 6'):
        single_step_inversion(f, _directions(2), voxel_size=VS, mask=m, model='sti')
    with pytest.raises(ValueError, match='orientations'):
        single_step_inversion(f, _directions(3), voxel_size=VS, mask=m)
    with pytest.raises(ValueError, match='solver'):
        solve_multi_orientation(f, _directions(2), voxel_size=VS, mask=m, solver='magic')
