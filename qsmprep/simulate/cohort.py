"""Cohort variation: per-subject random anatomy, pathology and acquisition settings.

With ``variation='cohort'`` (the ``cohort`` preset) every subject gets, on top of the
phantom's own draws (tissue values, skull/scalp thickness, smooth deformation, veins):

* **head size and pose**: a global linear scale in :data:`COHORT` ``head_scale`` times a
  per-axis factor ``1 ± axis_scale``, and a rotation of the anatomy about the brain centre
  by up to ``pose_deg`` degrees (random axis); the smooth random displacement gets an
  amplitude drawn in ``deformation_mm``.  Every structure (template maps, nuclei, veins,
  air, shells) is evaluated at the warped template coordinate, and the fibre directions are
  pushed forward by the inverse of the warp's local Jacobian, ``f ∝ (Dφ)⁻¹ f_template``
  (so they follow the global rotation and scaling and the local shear of the warp);
* **deep-grey-matter iron**: the χ of each nucleus is its nominal value (the middle of
  :data:`~qsmprep.simulate.phantom.TISSUES`) times a factor in ``iron_factor``
  (left and right alike); R2* of the nucleus is scaled by the same factor;
* **white matter**: the anisotropy Δχ is scaled by ``msa_scale``; the weights of the
  fibre-field tract models by ``tract_weight`` each; the directions are turned by a smooth
  random rotation field (features ≈ 24 mm) of at most ``fibre_jitter_deg`` degrees;
* **veins**: the number of random cortical veins in ``cortical_veins``, vein radii scaled
  by ``vein_radius_scale`` (vein χ is drawn as before, 0.30–0.45 ppm);
* **lesions** (:data:`LESIONS`, ``lesions='random'``; ``'all'``: at least one of each
  class; ``'none'``): iso-intense MS-like white-matter lesions (no anisotropy, χ ≈ NAWM),
  paramagnetic-rim MS lesions (core ≈ NAWM, a 1–1.5 mm rim of higher χ), microbleeds
  (small spheres, χ > 0), calcifications (χ < 0), and a haemorrhage (a larger χ > 0
  ellipsoid).  Their labels extend the ``dseg`` table (:data:`LESION_LABELS`; the deep grey
  matter ids 1–15 are unchanged);
* **acquisition**: voxel size (in-plane 1–2 mm, sometimes a thicker slice), 3 T or 7 T
  (with 7 T echo times), SNR — unless the setting was given explicitly, then it is the same
  for every subject.

Every draw comes from ``SeedSequence([seed, subject, 300])`` (lesion positions from
``[seed, subject, 301]``, the fibre rotation field from ``[seed, subject, 302]``), so
subject *k* of seed *s* is the same whatever the number of subjects.  :func:`draw_subject`
returns the draws (JSON-serialisable), written to
``derivatives/qsmprep-simulate/sub-XX/sub-XX_cohort.json``.
"""

from __future__ import annotations

import copy
import math

import numpy as np

__all__ = ['COHORT', 'LESIONS', 'LESION_LABELS', 'draw_subject', 'random_rotation',
           'subject_config']

#: Ranges of the per-subject draws (uniform unless noted).
COHORT = {
    'head_scale': (0.92, 1.08),        # global linear scale
    'axis_scale': 0.04,                # per-axis factor 1 ± this
    'pose_deg': 8.0,                   # rotation of the anatomy about the brain centre
    'deformation_mm': (2.0, 6.0),      # max amplitude of the smooth displacement
    'iron_factor': (0.7, 1.3),         # per nucleus, × nominal χ (and R2*)
    'msa_scale': (0.5, 1.6),           # × drawn white-matter Δχ
    'tract_weight': (0.5, 1.5),        # per fibre-field tract model
    'fibre_jitter_deg': (0.0, 15.0),   # max angle of a smooth random fibre rotation field
    'cortical_veins': (3, 12),         # integer, inclusive
    'vein_radius_scale': (0.8, 1.3),
    'snr': (40.0, 200.0),              # log-uniform
    'p_7t': 0.3,                       # probability of 7 T (else 3 T)
    'voxel_inplane_mm': (1.0, 1.25, 1.5, 1.75, 2.0),  # choices
    'p_anisotropic': 0.4,              # slice thicker than in-plane (up to 2 mm)
    'echo_times_3t': (0.005, 0.010, 0.015, 0.020),
    'echo_times_7t': (0.004, 0.008, 0.012, 0.016),
}

#: Lesion classes: dseg label id(s), number per subject (inclusive range), sizes (mm) and
#: susceptibility (ppm; ``delta_chi``: relative to the subject's white matter, ``chi``:
#: relative to CSF), proton density and T2* at 3 T (ms).
LESIONS = {
    'ms_iso': {'label': 16, 'count': (0, 6), 'radius_mm': (1.5, 5.0),
               'elongation': (1.0, 1.8), 'delta_chi': (-0.01, 0.01), 'pd': 0.80,
               't2s': 60.0},
    'ms_rim': {'label': 17, 'rim_label': 18, 'count': (0, 3), 'radius_mm': (2.0, 5.0),
               'elongation': (1.0, 1.5), 'rim_mm': (1.0, 1.5), 'delta_chi': (0.0, 0.01),
               'rim_delta_chi': (0.02, 0.05), 'pd': 0.80, 't2s': 55.0, 'rim_t2s': 30.0},
    'microbleed': {'label': 19, 'count': (0, 6), 'radius_mm': (0.75, 2.0),
                   'elongation': (1.0, 1.0), 'chi': (0.3, 1.0), 'pd': 0.60, 't2s': 6.0},
    'calcification': {'label': 20, 'count': (0, 2), 'radius_mm': (1.0, 3.0),
                      'elongation': (1.0, 1.3), 'chi': (-0.5, -0.2), 'pd': 0.20,
                      't2s': 8.0},
    'haemorrhage': {'label': 21, 'count': (0, 1), 'radius_mm': (5.0, 10.0),
                    'elongation': (1.0, 1.5), 'chi': (0.4, 1.0), 'pd': 0.70, 't2s': 10.0},
}

#: dseg ids and names of the lesion classes (added to the phantom's LABELS table).
LESION_LABELS = {16: 'lesion_ms', 17: 'lesion_ms_rim_core', 18: 'lesion_ms_rim',
                 19: 'microbleed', 20: 'calcification', 21: 'haemorrhage'}

#: Settings that are drawn per subject unless given explicitly.
DRAWN_SETTINGS = ('voxel_size', 'field_strength', 'echo_times', 'snr', 'deformation')


def _rng(*key):
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def random_rotation(rng, max_deg):
    """Rotation by an angle uniform in [0, ``max_deg``] about a uniformly random axis.

    >>> R = random_rotation(np.random.default_rng(0), 8.0)
    >>> bool(np.allclose(R @ R.T, np.eye(3)) and np.degrees(np.arccos((np.trace(R) - 1) / 2))
    ...      <= 8.0 + 1e-9)
    True
    """
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    a = np.deg2rad(rng.uniform(0.0, max_deg))
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * K + (1 - np.cos(a)) * (K @ K)


def _orthonormal(rng):
    """A uniformly random rotation matrix (QR of a Gaussian matrix, det +1)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _draw_lesions(rng, mode, wm_chi=None):
    out = []
    if mode == 'none':
        return out
    for cls, spec in LESIONS.items():
        lo, hi = spec['count']
        if mode == 'all':
            lo = max(1, lo)
        n = int(rng.integers(lo, max(lo, hi) + 1))
        for _ in range(n):
            r = float(rng.uniform(*spec['radius_mm']))
            e = float(rng.uniform(*spec['elongation']))
            d = {'class': cls, 'label': spec['label'],
                 'radii_mm': [r * e, r, r / math.sqrt(e)],
                 'axes': _orthonormal(rng).tolist(),
                 'pd': spec['pd'], 'r2star': 1e3 / spec['t2s']}
            if 'delta_chi' in spec:
                d['delta_chi_ppm'] = float(rng.uniform(*spec['delta_chi']))
            else:
                d['chi_ppm'] = float(rng.uniform(*spec['chi']))
            if cls == 'ms_rim':
                d['rim_label'] = spec['rim_label']
                d['rim_mm'] = float(rng.uniform(*spec['rim_mm']))
                d['rim_delta_chi_ppm'] = float(rng.uniform(*spec['rim_delta_chi']))
                d['rim_r2star'] = 1e3 / spec['rim_t2s']
            out.append(d)
    return out


def draw_subject(cfg, subject_index):
    """Per-subject draws of a cohort (``cfg`` from :func:`~.presets.resolve_config`).

    Returns
    -------
    dict
        ``acquisition`` (the drawn settings: voxel size, field strength, echo times, SNR;
        only those not given explicitly), ``anatomy`` (scale, pose rotation, deformation
        amplitude, iron factors, MSA scale, tract weights, veins) and ``lesions`` (class,
        label, radii, axes, χ; positions are chosen on the subject's anatomy by
        :func:`~qsmprep.simulate.phantom.make_phantom` from ``lesion_seed``).

    >>> from qsmprep.simulate.presets import resolve_config
    >>> c = resolve_config('cohort', seed=3)
    >>> draw_subject(c, 2) == draw_subject(resolve_config('cohort', seed=3, subjects=50), 2)
    True
    """
    rng = _rng(cfg['seed'], subject_index, 300)
    fixed = set(cfg.get('variation_fixed', ()))
    C = COHORT
    # acquisition (always drawn, so the anatomy draws do not depend on what is fixed)
    a = float(rng.choice(C['voxel_inplane_mm']))
    aniso = bool(rng.uniform() < C['p_anisotropic']) and a < 2.0
    thick = float(rng.choice([v for v in C['voxel_inplane_mm'] if v > a])) if aniso else a
    b0 = 7.0 if rng.uniform() < C['p_7t'] else 3.0
    snr = float(math.exp(rng.uniform(math.log(C['snr'][0]), math.log(C['snr'][1]))))
    deform = float(rng.uniform(*C['deformation_mm']))
    # echo times follow the subject's field strength (the drawn one, or the fixed one)
    b0_eff = float(cfg['field_strength']) if 'field_strength' in fixed else b0
    acq = {'voxel_size': [a, a, thick], 'field_strength': b0,
           'echo_times': list(C['echo_times_7t'] if b0_eff > 5.0 else C['echo_times_3t']),
           'snr': snr, 'deformation': deform}
    acq = {k: v for k, v in acq.items() if k not in fixed}
    # anatomy
    scale = float(rng.uniform(*C['head_scale'])) * \
        (1.0 + rng.uniform(-C['axis_scale'], C['axis_scale'], 3))
    pose = random_rotation(rng, C['pose_deg'])
    from qsmprep.simulate.phantom import NUCLEUS_TISSUES

    iron = {t: float(rng.uniform(*C['iron_factor'])) for t in NUCLEUS_TISSUES}
    anatomy = {
        'scale': [float(s) for s in scale], 'pose': pose.tolist(),
        'pose_deg': float(np.degrees(np.arccos(np.clip((np.trace(pose) - 1) / 2, -1, 1)))),
        'iron_factor': iron, 'msa_scale': float(rng.uniform(*C['msa_scale'])),
        'tract_weights': [float(w) for w in rng.uniform(*C['tract_weight'], 6)],
        'cortical_veins': int(rng.integers(C['cortical_veins'][0], C['cortical_veins'][1] + 1)),
        'vein_radius_scale': float(rng.uniform(*C['vein_radius_scale'])),
        'lesion_seed': [int(cfg['seed']), int(subject_index), 301],
        'fibre_jitter_deg': float(rng.uniform(*C['fibre_jitter_deg'])),
        'fibre_seed': [int(cfg['seed']), int(subject_index), 302],
    }
    return {'acquisition': acq, 'anatomy': anatomy,
            'lesions': _draw_lesions(rng, cfg.get('lesions') or 'none')}


def subject_config(cfg, draws):
    """``cfg`` with the subject's drawn acquisition settings applied (a copy)."""
    out = copy.deepcopy(cfg)
    out.update(copy.deepcopy(draws['acquisition']))
    if 'model_resolution' not in set(cfg.get('variation_fixed', ())):
        out['model_resolution'] = min(out['voxel_size'])
    return out
