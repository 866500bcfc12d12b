"""Realism effects of the simulator (issue 10): each does what it says, on its numbers."""

import types

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from qsmprep.numerics.constants import GAMMA_BAR
from qsmprep.simulate import acquisition as acq
from qsmprep.simulate import phantom as ph
from qsmprep.simulate import simulate_dataset
from qsmprep.simulate.presets import (
    EFFECTS_OFF,
    REALISTIC,
    SimulationConfigError,
    resolve_config,
)

# ---------------------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------------------


def test_realism_switch_and_explicit_settings():
    off = resolve_config('demo')
    assert {k: off[k] for k in EFFECTS_OFF} == EFFECTS_OFF
    assert off['phase_units'] == 'rad' and off['grid_orientation'] == 'RAS'
    on = resolve_config('demo', realism='realistic')
    for k in EFFECTS_OFF:
        expected = REALISTIC[k][0] if k == 'bias_field' else REALISTIC[k]
        assert on[k] == expected, k
    assert on['phase_units'] == 'arbitrary' and on['magnitude_dtype'] == 'int16'
    assert resolve_config('demo', realism='realistic', field_strength=7)['bias_field'] == 0.5
    # an explicit setting wins over the switch, in both directions
    c = resolve_config('demo', realism='realistic', dephasing=False, phase_units='rad',
                       coil_phase=0.0)
    assert c['dephasing'] is False and c['phase_units'] == 'rad' and c['coil_phase'] == 0
    assert c['body'] is True
    assert resolve_config('demo', body=True)['body'] is True
    seven = resolve_config('7t')
    assert seven['field_strength'] == 7.0 and seven['voxel_size'] == [1.5, 1.5, 2.0]
    assert seven['grid_orientation'] == 'LAS' and seven['oblique'] > 0
    assert seven['realism'] == 'realistic' and seven['bias_field'] == 0.5


@pytest.mark.parametrize('kw', [{'realism': 'max'}, {'air_cavities': 'huge'},
                                {'grid_orientation': 'XYZ'}, {'coil_phase': -1},
                                {'receiver_nonharmonic': 'a'}, {'bias_field': 5}])
def test_bad_realism_settings(kw):
    with pytest.raises(SimulationConfigError):
        resolve_config('tiny', **kw)


# ---------------------------------------------------------------------------------------
# anatomy: air cavities, bone, body below the model
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def heads():
    return {air: ph.make_phantom(4.0, rng=np.random.default_rng(3), air=air)
            for air in ('standard', 'extended')}


def _air(p):
    return np.abs(p.chi_mean - ph.AIR_CHI) < ph.AIR_CHI / 2


def test_extended_air_cavities_reach_frontal_and_temporal_bone(heads):
    std, ext = heads['standard'], heads['extended']
    # same random draws: the brain is untouched, only air is added outside it
    assert np.array_equal(std.brain, ext.brain)
    assert np.array_equal(std.chi_mean[std.brain], ext.chi_mean[ext.brain])
    assert _air(ext).sum() > _air(std).sum()
    ds = ndimage.distance_transform_edt(~_air(std), sampling=4.0)[std.brain]
    de = ndimage.distance_transform_edt(~_air(ext), sampling=4.0)[ext.brain]
    # standard: no air within 8 mm of a brain voxel centre; extended: a good many
    assert (ds < 8).sum() == 0 and (de < 8).sum() > 100
    # but air never enters the brain or its CSF rim (≥ 2 mm)
    assert de.min() > 2.0
    # frontal (anterior) and temporal (lateral) lobes are among the near-air voxels
    pts = np.argwhere(ext.brain)[de < 8] @ ext.affine[:3, :3].T + ext.affine[:3, 3]
    assert pts[:, 1].max() > 40 and np.abs(pts[:, 0]).max() > 40


def test_bone_within_a_few_mm_of_the_cortex(heads):
    p = heads['standard']
    lo, hi = ph.TISSUES['bone']['chi']
    d = ndimage.distance_transform_edt(~p.brain, sampling=4.0)
    shell = (d > 6.0) & (d <= 8.0) & ~_air(p)  # 7-8 mm out (4 mm grid), not air
    chi = p.chi_mean[shell]
    # the skull starts 2-3.5 mm (CSF rim) outside the brain, χ −2.4…−1.8 ppm vs water
    assert lo <= np.median(chi) <= hi
    assert np.mean(chi < 0.75 * lo) > 0.9


def test_body_field_of_a_sphere_below_the_model_is_its_dipole_field(monkeypatch):
    # a sphere (r = 100 mm) well below the model box in place of the torso, no neck: the
    # field on the acquisition grid is the analytic dipole field of a sphere of −9.4 ppm
    centre, a = np.array([0.0, -30.0, -360.0]), 100.0
    monkeypatch.setattr(acq, 'BODY_TORSO', (tuple(centre), (a, a, a)))
    monkeypatch.setattr(acq, 'BODY_NECK', ((0.0, -30.0), (1e-3, 1e-3), (-250.0, None)))
    fake = types.SimpleNamespace(voxel_size=np.array([4.0, 4.0, 4.0]),
                                 deformation={'scale': [1.0, 1.0, 1.0]})
    c = np.array([0.0, -18.0, 10.0])
    for R in (np.eye(3), acq.rotation_about((1.0, 0.5, 0.0), 30.0)):
        A = np.eye(4)
        A[:3, :3] = np.diag([-4.0, 4.0, 4.0])  # LAS grid
        shape = (40, 46, 40)
        A[:3, 3] = c - A[:3, :3] @ ((np.array(shape) - 1) / 2)
        g = acq.Geometry('x', R, np.diag([-1.0, 1.0, 1.0]), A, shape, c)
        f = acq.body_field(fake, g, spacing=6.0)
        ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing='ij'), -1)
        x = ijk @ A[:3, :3].T + A[:3, 3]                 # scanner frame
        cs = R @ (centre - c) + c                         # sphere centre, scanner frame
        r = x - cs
        rn = np.linalg.norm(r, axis=-1)
        exact = -ph.AIR_CHI / 3 * (a / rn) ** 3 * (3 * (r[..., 2] / rn) ** 2 - 1)
        # free-space (aperiodic) convolution: the field itself, mean included
        assert np.abs(exact).max() > 0.05
        assert np.linalg.norm(f - exact) / np.linalg.norm(exact) < 0.01
        fd, ed = f - f.mean(), exact - exact.mean()
        assert np.linalg.norm(fd - ed) / np.linalg.norm(ed) < 0.02


def test_body_continues_the_neck_instead_of_ending_it(tiny_subject):
    # Without the body the neck ends at the bottom of the model box, a 'pole' of tissue
    # whose field is strongest at the bottom of the brain; the body removes that end.
    # Check the body field has that shape: its brain variation is largest inferiorly.
    g = tiny_subject.geometries[0]
    f = acq.body_field(tiny_subject.phantom, g)
    brain = tiny_subject.acquisitions[0].brain
    z = np.argwhere(brain)[:, 2]
    v = f[brain]
    low, high = v[z < np.percentile(z, 20)], v[z > np.percentile(z, 80)]
    assert abs(low.mean() - v.mean()) > abs(high.mean() - v.mean())
    assert v.std() > 0.02  # ppm: not negligible next to a local field of ~0.01-0.05 ppm


# ---------------------------------------------------------------------------------------
# signal: dephasing, phases, bias, quantisation, LAS grids
# ---------------------------------------------------------------------------------------


def test_dephasing_is_the_sinc_of_the_field_gradient():
    n, vs, b0, tes = 64, (2.0, 1.5, 3.0), 3.0, [0.005, 0.02]
    G = 0.05  # ppm/mm along x: u = π γ̄ B0 TE G Δx·1e-6 up to ≈ 1.8 rad at 20 ms
    x = np.arange(n, dtype=float)[:, None, None] * vs[0] * np.ones((n, 4, 5))
    field = G * x
    pd, r2 = np.ones(field.shape), np.full(field.shape, 20.0)
    grad = acq.field_gradient(field, vs)
    assert np.allclose(grad[0], G, rtol=1e-5) and np.abs(grad[1]).max() < 1e-6
    plain = list(acq.gre_signal(field, pd, r2, echo_times=tes, field_strength=b0))
    deph = list(acq.gre_signal(field, pd, r2, echo_times=tes, field_strength=b0,
                               field_gradient=grad, voxel_size=vs))
    for te, (m0, p0), (m1, p1) in zip(tes, plain, deph, strict=True):
        u = np.pi * GAMMA_BAR * b0 * te * G * vs[0] * 1e-6
        assert np.allclose(m1 / m0, abs(np.sin(u) / u), rtol=1e-4)
        assert np.allclose(np.angle(np.exp(1j * (p1 - p0))), 0, atol=1e-5)  # sinc > 0 here
    # past the first zero of the sinc the signal flips sign: phase + π
    steep = [np.full((2, 2, 2), 1.5 / (GAMMA_BAR * b0 * 0.02 * 2.0 * 1e-6)),  # u = 1.5π
             np.zeros((2, 2, 2)), np.zeros((2, 2, 2))]
    d = acq.dephasing_factor(steep, 2.0, 0.02, b0)
    assert np.allclose(d, np.sin(1.5 * np.pi) / (1.5 * np.pi), rtol=1e-5)


def test_dephasing_drops_signal_near_air(tiny_subject):
    f = tiny_subject.acquisitions[0]
    g = tiny_subject.geometries[0]
    d = np.abs(acq.dephasing_factor(acq.field_gradient(f.total, g.voxel_size),
                                    g.voxel_size, 0.02, 3.0))
    head = f.pd > 0.3
    tissue_air = ndimage.binary_dilation(f.pd < 0.01, iterations=2) & head & ~f.brain
    assert np.all(d <= 1.0 + 1e-6)
    assert np.median(d[f.brain]) > 0.95                  # brain: mostly unaffected
    assert (d[tissue_air] < 0.5).mean() > 5 * max((d[f.brain] < 0.5).mean(), 1e-3)


def test_nonharmonic_field_is_not_removed_by_harmonic_filtering():
    f = acq.smooth_random_field((48, 48, 48), 2.0, rng=np.random.default_rng(0),
                                correlation_mm=30.0)
    assert np.abs(f).max() == pytest.approx(1.0) and abs(f.mean()) < 1e-6

    def lap(a):
        return sum(np.roll(a, 1, d) + np.roll(a, -1, d) - 2 * a for d in range(3))[4:-4, 4:-4,
                                                                                   4:-4]
    i = np.arange(48, dtype=float)
    X, Y, _ = np.meshgrid(i, i, i, indexing='ij')
    harmonic = (X - 24) ** 2 - (Y - 24) ** 2
    assert np.abs(lap(harmonic)).max() < 1e-9            # the test sees harmonic as 0
    # non-harmonic: the Laplacian at the feature scale is of the order of the field
    scale = (30.0 / 2.0 / 2.0) ** 2                      # (half a feature, in voxels)²
    assert np.sqrt(np.mean(lap(f) ** 2)) * scale > 0.1 * np.sqrt(np.mean(f ** 2))


def test_bias_field_central_brightening():
    shape, vs, a = (51, 61, 51), 3.0, 0.5
    b = acq.bias_field(shape, vs, rng=np.random.default_rng(1), amplitude=a)
    r2 = sum(((np.arange(n) - (n - 1) / 2) * vs).reshape([-1 if k == d else 1
                                                          for k in range(3)]) ** 2
             for d, n in enumerate(shape))
    central = 1 + a * np.exp(-r2 / (2 * 60.0 ** 2))
    rest = b / central  # the smooth random part, exp(a/2·n) with max |n| = 1
    assert np.abs(np.log(rest)).max() == pytest.approx(a / 2, rel=1e-4)
    c = tuple(n // 2 for n in shape)
    assert central[c] == pytest.approx(1 + a) and central[0, 0, 0] < 1.05
    assert np.array_equal(acq.bias_field(shape, vs, rng=np.random.default_rng(1),
                                         amplitude=0.0), np.ones(shape, np.float32))


@pytest.fixture(scope='module')
def noise_free(tmp_path_factory):
    """Tiny one-orientation, two-echo noise-free datasets with one effect each."""
    root = tmp_path_factory.mktemp('realism')
    kws = {'base': {}, 'recv': {'receiver_nonharmonic': 3.0}, 'coil': {'coil_phase': 0.1},
           'bias': {'bias_field': 0.5}, 'quant': {'phase_units': 'arbitrary'},
           'las': {'grid_orientation': 'LAS'}}
    out = {}
    for name, kw in kws.items():
        simulate_dataset(root / name, preset='tiny', orientations=1, echoes=2, snr=None,
                         truth=False, jobs=1, **kw)
        anat = root / name / 'sub-01' / 'anat'
        out[name] = {
            (e, part): nib.load(anat / f'sub-01_acq-ori01_echo-{e}_part-{part}_MEGRE.nii.gz')
            for e in (1, 2) for part in ('mag', 'phase')}
    return out


def _data(img):
    return np.asarray(img.dataobj, dtype=np.float64)


def _dphi(a, b):
    return np.angle(np.exp(1j * (_data(a) - _data(b))))


def test_receiver_nonharmonic_phase_is_te_independent(noise_free):
    base, recv = noise_free['base'], noise_free['recv']
    d1, d2 = _dphi(recv[1, 'phase'], base[1, 'phase']), _dphi(recv[2, 'phase'],
                                                               base[2, 'phase'])
    head = _data(base[1, 'mag']) > 0.05
    assert np.abs(np.angle(np.exp(1j * (d2 - d1))))[head].max() < 1e-4  # same every echo
    assert np.array_equal(_data(recv[1, 'mag']), _data(base[1, 'mag']))
    # several radians across the head (peak amplitude 3 rad, wrapped to (−π, π])
    assert np.ptp(d1[head]) > 2.0


def test_coil_phase_varies_with_echo(noise_free):
    base, coil = noise_free['base'], noise_free['coil']
    d1, d2 = _dphi(coil[1, 'phase'], base[1, 'phase']), _dphi(coil[2, 'phase'],
                                                               base[2, 'phase'])
    for d in (d1, d2):
        assert 0.05 < np.abs(d).max() <= 0.1 + 1e-4
    assert np.abs(d2 - d1).max() > 0.05                   # differs between echoes
    assert np.corrcoef(d1.ravel(), d2.ravel())[0, 1] < 0.9


def test_bias_field_multiplies_the_magnitude(noise_free):
    base, bias = noise_free['base'], noise_free['bias']
    m0, m1 = _data(base[1, 'mag']), _data(bias[1, 'mag'])
    head = m0 > 0.05
    ratio = m1[head] / m0[head]
    assert ratio.min() > np.exp(-0.25) - 1e-4 and ratio.max() < 1.5 * np.exp(0.25) + 1e-4
    assert np.ptp(ratio) > 0.2
    r2 = _data(bias[2, 'mag'])[head] / _data(base[2, 'mag'])[head]
    assert np.allclose(r2, ratio, rtol=1e-4)              # same for every echo
    assert np.array_equal(_data(bias[1, 'phase']), _data(base[1, 'phase']))


def test_phase_quantisation_to_scanner_integers(noise_free):
    q, base = noise_free['quant'][1, 'phase'], noise_free['base'][1, 'phase']
    v = np.asarray(q.dataobj)
    assert v.dtype == np.int16 and v.min() >= -4096 and v.max() <= 4095
    err = np.angle(np.exp(1j * (v * np.pi / 4096 - _data(base))))
    assert np.abs(err).max() <= np.pi / 4096 + 1e-6
    assert np.abs(err).max() > np.pi / 8192 * 0.5  # it does quantise


def test_las_grid_is_the_ras_grid_flipped_in_x(noise_free):
    ras, las = noise_free['base'][1, 'phase'], noise_free['las'][1, 'phase']
    assert nib.aff2axcodes(las.affine) == ('L', 'A', 'S')
    assert nib.aff2axcodes(ras.affine) == ('R', 'A', 'S')
    # same voxel centres in world space, x reversed; same signal up to FFT padding layout
    n = ras.shape[0]
    assert np.allclose(las.affine @ [n - 1, 0, 0, 1], ras.affine @ [0, 0, 0, 1])
    m = _data(noise_free['base'][1, 'mag']) > 0.3
    # echo differences (the receiver phase, drawn on voxel axes, cancels)
    dl = _dphi(noise_free['las'][2, 'phase'], las)[::-1]
    dr = _dphi(noise_free['base'][2, 'phase'], ras)
    d = np.angle(np.exp(1j * (dl - dr)))
    assert np.median(np.abs(d[m])) < 1e-3 < np.median(np.abs(dr[m]))
    assert np.allclose(_data(noise_free['las'][1, 'mag'])[::-1],
                       _data(noise_free['base'][1, 'mag']), atol=1e-4)
