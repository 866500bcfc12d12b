"""Named simulation presets and validation of simulation settings.

=========  ======  =====  ======  ========  ============================================
preset     voxel   ori.   echoes  subjects  use
=========  ======  =====  ======  ========  ============================================
``tiny``   4 mm    6      3       1         unit and workflow tests (seconds)
``demo``   2 mm    8      4       1         README demo (a few minutes end to end)
``full``   1 mm    12     6       1         performance benchmark input (scanner-like
                                            int16 magnitude and phase)
``cohort`` 1–2 mm  6      4       8         training cohort for deep-learning models:
                                            per-subject anatomy, iron, anisotropy,
                                            lesions, voxel size, 3/7 T, SNR, tilts ≤ 45°
                                            (:mod:`qsmprep.simulate.cohort`)
``7t``     1.5×    6      4       1         7 T, 1.5 × 1.5 × 2 mm, LAS grid, oblique
           1.5×2                            (≤ 15°), every realism effect on
=========  ======  =====  ======  ========  ============================================

Realism effects (``realism='realistic'`` turns all of them on at the strengths of
:data:`REALISTIC`; each can also be set on its own): ``air_cavities='extended'``,
``body`` (neck and shoulders below the model box), ``dephasing`` (intravoxel dephasing),
``receiver_nonharmonic`` (rad), ``coil_phase`` (rad, per echo), ``bias_field`` (fraction),
and scanner-integer phase / int16 magnitude (quantisation).  The presets other than ``7t``
keep ``realism='none'`` (their accuracy figures and tests rely on it).

Every setting can be overridden (keyword arguments of
:func:`qsmprep.simulate.simulate_dataset`, options of ``qsmprep-simulate``).
"""

from __future__ import annotations

import copy
import itertools
import math

__all__ = ['DEFAULTS', 'EFFECTS_OFF', 'GRID_ORIENTATIONS', 'PRESETS', 'REALISTIC',
           'SimulationConfigError', 'resolve_config']


class SimulationConfigError(ValueError):
    """A simulation setting has an invalid value (the message says which and why)."""


#: Settings shared by all presets (documented in :func:`resolve_config`).
DEFAULTS = {
    'field_strength': 3.0,
    'snr': 100.0,
    'phase_units': 'rad',
    'magnitude_dtype': 'float32',
    'b0_dir_sidecar': True,
    'oblique': 0.0,
    'tilt_range': (15.0, 40.0),
    'deformation': 3.0,
    'model_resolution': None,
    'padding': 24.0,
    'fov_margin': 12.0,
    'truth': True,
    'sessions': None,
    'grid_orientation': 'RAS',
    'realism': 'none',
    'variation': 'none',
    'lesions': None,
    # realism effects: None = set by ``realism`` (off for 'none', REALISTIC for 'realistic')
    'air_cavities': None,
    'body': None,
    'dephasing': None,
    'receiver_nonharmonic': None,
    'coil_phase': None,
    'bias_field': None,
}

#: Effect settings when they are off (``realism='none'``).
EFFECTS_OFF = {'air_cavities': 'standard', 'body': False, 'dephasing': False,
               'receiver_nonharmonic': 0.0, 'coil_phase': 0.0, 'bias_field': 0.0}

#: Effect strengths of ``realism='realistic'`` (``bias_field``: 0.2 below 5 T, 0.5 from 5 T;
#: ``phase_units``/``magnitude_dtype``: scanner integers unless given explicitly).
REALISTIC = {'air_cavities': 'extended', 'body': True, 'dephasing': True,
             'receiver_nonharmonic': 3.0, 'coil_phase': 0.1, 'bias_field': (0.2, 0.5),
             'phase_units': 'arbitrary', 'magnitude_dtype': 'int16'}

#: Axis codes accepted by ``grid_orientation`` (sign flips of the voxel axes).
GRID_ORIENTATIONS = tuple(a + b + c for a in 'RL' for b in 'AP' for c in 'SI')

PRESETS = {
    'tiny': {'voxel_size': (4.0, 4.0, 4.0), 'orientations': 6,
             'echo_times': (0.005, 0.012, 0.019), 'subjects': 1},
    'demo': {'voxel_size': (2.0, 2.0, 2.0), 'orientations': 8,
             'echo_times': (0.005, 0.010, 0.015, 0.020), 'subjects': 1},
    'full': {'voxel_size': (1.0, 1.0, 1.0), 'orientations': 12,
             'echo_times': (0.005, 0.010, 0.015, 0.020, 0.025, 0.030), 'subjects': 1,
             'phase_units': 'arbitrary', 'magnitude_dtype': 'int16'},
    'cohort': {'voxel_size': (2.0, 2.0, 2.0), 'orientations': 6,
               'echo_times': (0.005, 0.010, 0.015, 0.020), 'subjects': 8,
               'deformation': 4.0, 'tilt_range': (0.0, 45.0), 'variation': 'cohort'},
    '7t': {'voxel_size': (1.5, 1.5, 2.0), 'orientations': 6,
           'echo_times': (0.004, 0.008, 0.012, 0.016), 'subjects': 1, 'field_strength': 7.0,
           'grid_orientation': 'LAS', 'oblique': 15.0, 'realism': 'realistic'},
}

_KNOWN = set(DEFAULTS) | {'voxel_size', 'orientations', 'echo_times', 'echoes', 'subjects',
                          'seed', 'preset'}


def _num(name, value, *, lo=None, hi=None, integer=False, allow_none=False):
    if value is None and allow_none:
        return None
    try:
        v = int(value) if integer else float(value)
    except (TypeError, ValueError):
        raise SimulationConfigError(f'{name} must be a number; got {value!r}') from None
    if integer and float(value) != v:
        raise SimulationConfigError(f'{name} must be an integer; got {value!r}')
    if not integer and not math.isfinite(v):
        raise SimulationConfigError(f'{name} must be finite; got {value!r}')
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f'[{lo}, {hi}]' if hi is not None else f'>= {lo}'
        raise SimulationConfigError(f'{name} must be in {rng}; got {value!r}')
    return v


def resolve_config(preset: str = 'demo', **overrides) -> dict:
    """Preset + overrides → validated settings.

    Settings
    --------
    voxel_size : float or 3 floats (mm)
        Acquisition voxel size (anisotropic allowed), 0.5–8 mm.
    orientations : int
        Number of head orientations (1–64); STI needs ≥ 6.
    echo_times : sequence of float (s)
        Strictly increasing, positive.  ``echoes`` (int) instead keeps the preset's first
        echo and spacing.
    field_strength : float (T)
    snr : float or None
        Magnitude SNR of the first echo in the brain; ``None``/``inf``/0: noise-free.
    phase_units : {'rad', 'arbitrary'}
    magnitude_dtype : {'float32', 'int16'}
    b0_dir_sidecar : bool
        Write ``B0_dir`` to the sidecars.
    oblique : float (degrees)
        Maximum oblique angle of the grid prescriptions (0: axis-aligned scanner grids).
    tilt_range : (min, max) degrees
        Head tilts of the non-reference orientations.
    deformation : float (mm)
        Amplitude of the per-subject random deformation.
    model_resolution : float (mm) or None
        Phantom model grid (default: the smallest acquisition voxel size).
    padding : float (mm)
        Air around the head for the FFT.
    fov_margin : float (mm)
        Margin around the brain in the acquisition field of view.
    truth : bool
        Write the ground-truth derivatives.
    subjects, sessions : int (sessions None: no session level)
    seed : int
    grid_orientation : str
        Axis code of the acquisition grids (``'RAS'``; ``'LAS'``: x axis flipped, as many
        scanners write; any of :data:`GRID_ORIENTATIONS`).
    realism : {'none', 'realistic'}
        ``'realistic'`` turns on every effect below at the strengths of :data:`REALISTIC`
        (and scanner-integer phase / int16 magnitude) unless the setting is given.
    air_cavities : {'standard', 'extended'}
        ``'extended'`` enlarges the frontal and sphenoid sinuses and mastoid cells and adds
        ethmoid cells, reaching the bone next to the frontal and temporal lobes.
    body : bool
        Add the field of the neck and shoulders below the model box (sources outside the
        simulated head and the acquired field of view).
    dephasing : bool
        Intravoxel dephasing: signal × Π_d sinc(γ G_d Δx_d TE/2) of the field gradient.
    receiver_nonharmonic : float (rad)
        Peak amplitude of a smooth non-harmonic, TE-independent receiver phase.
    coil_phase : float (rad)
        Peak amplitude of a smooth non-harmonic coil-combination phase drawn independently
        per echo.
    bias_field : float
        Magnitude bias (B1/receive): central brightening ``1 + a·G`` times a smooth random
        ``exp(a/2·n)``; 0: none.
    variation : {'none', 'cohort'}
        ``'cohort'`` (the ``cohort`` preset): per-subject random head size, pose and
        deformation, deep-grey-matter iron, white-matter anisotropy and fibre field, veins,
        lesions, and — unless given explicitly — voxel size, field strength (with its echo
        times), SNR and deformation amplitude (:mod:`qsmprep.simulate.cohort`).
    lesions : {'none', 'random', 'all'}
        Lesions of a cohort (default ``'random'`` with ``variation='cohort'``): a random
        number of each class, or at least one of each; needs ``variation='cohort'``.

    >>> c = resolve_config('tiny', echoes=4)
    >>> c['echo_times']
    [0.005, 0.012, 0.019, 0.026]
    >>> resolve_config('demo', phase_units='deg')
    Traceback (most recent call last):
    ...
    qsmprep.simulate.presets.SimulationConfigError: phase_units must be 'rad' or ...
    """
    if preset not in PRESETS:
        raise SimulationConfigError(
            f'unknown preset {preset!r}; choose one of {", ".join(PRESETS)}')
    unknown = set(overrides) - _KNOWN
    if unknown:
        raise SimulationConfigError(f'unknown setting(s) {", ".join(sorted(unknown))}; known: '
                                    f'{", ".join(sorted(_KNOWN - {"preset"}))}')
    cfg = copy.deepcopy(DEFAULTS)
    cfg.update(copy.deepcopy(PRESETS[preset]))
    ov = {k: v for k, v in overrides.items() if v is not None or k in ('snr',
                                                                        'model_resolution')}
    echoes = ov.pop('echoes', None)
    cfg.update(ov)
    cfg['preset'] = preset
    cfg['seed'] = _num('seed', cfg.get('seed', 0), lo=0, integer=True)

    vs = cfg['voxel_size']
    vs = [vs] * 3 if isinstance(vs, int | float) else list(vs)
    if len(vs) == 1:
        vs = vs * 3
    if len(vs) != 3:
        raise SimulationConfigError(f'voxel_size must be 1 or 3 numbers (mm); got {vs!r}')
    cfg['voxel_size'] = [_num('voxel_size', v, lo=0.5, hi=8.0) for v in vs]
    cfg['orientations'] = _num('orientations', cfg['orientations'], lo=1, hi=64, integer=True)
    te = [_num('echo_times', t, lo=1e-4, hi=0.2) for t in cfg['echo_times']]
    if echoes is not None and 'echo_times' not in overrides:
        n = _num('echoes', echoes, lo=1, hi=32, integer=True)
        step = te[1] - te[0] if len(te) > 1 else te[0]
        te = [round(te[0] + i * step, 9) for i in range(n)]
    elif echoes is not None and int(echoes) != len(te):
        raise SimulationConfigError(
            f'echoes={echoes} does not match the {len(te)} echo_times given')
    if not te or any(b <= a for a, b in itertools.pairwise(te)):
        raise SimulationConfigError(f'echo_times must be strictly increasing; got {te}')
    cfg['echo_times'] = te
    cfg['field_strength'] = _num('field_strength', cfg['field_strength'], lo=0.1, hi=21.1)
    snr = cfg['snr']
    if snr is None or (isinstance(snr, int | float) and (snr == 0 or math.isinf(snr))):
        cfg['snr'] = None
    else:
        cfg['snr'] = _num('snr', snr, lo=1e-3)
    if cfg['phase_units'] not in ('rad', 'arbitrary'):
        raise SimulationConfigError(
            f"phase_units must be 'rad' or 'arbitrary'; got {cfg['phase_units']!r}")
    if cfg['magnitude_dtype'] not in ('float32', 'int16'):
        raise SimulationConfigError(
            f"magnitude_dtype must be 'float32' or 'int16'; got {cfg['magnitude_dtype']!r}")
    cfg['b0_dir_sidecar'] = bool(cfg['b0_dir_sidecar'])
    cfg['truth'] = bool(cfg['truth'])
    cfg['oblique'] = _num('oblique', cfg['oblique'], lo=0.0, hi=45.0)
    tr = list(cfg['tilt_range'])
    if len(tr) != 2:
        raise SimulationConfigError(f'tilt_range must be two angles (degrees); got {tr!r}')
    tr = [_num('tilt_range', t, lo=0.0, hi=60.0) for t in tr]
    if tr[0] > tr[1]:
        raise SimulationConfigError(f'tilt_range must be (min, max) with min <= max; got {tr}')
    cfg['tilt_range'] = tr
    cfg['deformation'] = _num('deformation', cfg['deformation'], lo=0.0, hi=10.0)
    mr = cfg['model_resolution']
    cfg['model_resolution'] = (min(cfg['voxel_size']) if mr is None
                               else _num('model_resolution', mr, lo=0.5, hi=8.0))
    cfg['padding'] = _num('padding', cfg['padding'], lo=0.0, hi=200.0)
    cfg['fov_margin'] = _num('fov_margin', cfg['fov_margin'], lo=0.0, hi=100.0)
    cfg['subjects'] = _num('subjects', cfg['subjects'], lo=1, hi=999, integer=True)
    cfg['sessions'] = _num('sessions', cfg['sessions'], lo=1, hi=99, integer=True,
                           allow_none=True)
    go = str(cfg['grid_orientation']).upper()
    if go not in GRID_ORIENTATIONS:
        raise SimulationConfigError(f'grid_orientation must be one of '
                                    f'{", ".join(GRID_ORIENTATIONS)}; '
                                    f'got {cfg["grid_orientation"]!r}')
    cfg['grid_orientation'] = go
    _resolve_effects(cfg, ov)
    _resolve_variation(cfg, ov, echoes)
    return cfg


def _resolve_variation(cfg, explicit, echoes):
    if cfg['variation'] not in ('none', 'cohort'):
        raise SimulationConfigError(
            f"variation must be 'none' or 'cohort'; got {cfg['variation']!r}")
    if cfg['lesions'] is None:
        cfg['lesions'] = 'random' if cfg['variation'] == 'cohort' else 'none'
    if cfg['lesions'] not in ('none', 'random', 'all'):
        raise SimulationConfigError(
            f"lesions must be 'none', 'random' or 'all'; got {cfg['lesions']!r}")
    if cfg['lesions'] != 'none' and cfg['variation'] != 'cohort':
        raise SimulationConfigError(
            f"lesions={cfg['lesions']!r} needs variation='cohort' (--variation cohort or "
            '--preset cohort)')
    if cfg['variation'] == 'cohort':
        fixed = {k for k in ('voxel_size', 'field_strength', 'echo_times', 'snr',
                             'deformation', 'model_resolution') if k in explicit}
        if echoes is not None:
            fixed.add('echo_times')
        cfg['variation_fixed'] = sorted(fixed)


def _resolve_effects(cfg, explicit):
    """Fill the realism effects (in place) from ``cfg['realism']`` where not given."""
    if cfg['realism'] not in ('none', 'realistic'):
        raise SimulationConfigError(
            f"realism must be 'none' or 'realistic'; got {cfg['realism']!r}")
    realistic = cfg['realism'] == 'realistic'
    for key, off in EFFECTS_OFF.items():
        if cfg[key] is None:
            v = REALISTIC[key] if realistic else off
            if key == 'bias_field' and realistic:
                v = v[0] if cfg['field_strength'] < 5.0 else v[1]
            cfg[key] = v
    if realistic:
        for key in ('phase_units', 'magnitude_dtype'):
            if key not in explicit:
                cfg[key] = REALISTIC[key]
    if cfg['air_cavities'] not in ('standard', 'extended'):
        raise SimulationConfigError(f"air_cavities must be 'standard' or 'extended'; got "
                                    f"{cfg['air_cavities']!r}")
    cfg['body'] = bool(cfg['body'])
    cfg['dephasing'] = bool(cfg['dephasing'])
    cfg['receiver_nonharmonic'] = _num('receiver_nonharmonic', cfg['receiver_nonharmonic'],
                                       lo=0.0, hi=50.0)
    cfg['coil_phase'] = _num('coil_phase', cfg['coil_phase'], lo=0.0, hi=3.2)
    cfg['bias_field'] = _num('bias_field', cfg['bias_field'], lo=0.0, hi=2.0)
