"""Numerical head phantom: anatomy, susceptibility tensor, proton density and R2*.

The anatomy comes from the MNI152 2009c nonlinear symmetric template and its grey/white
matter probability maps and brain mask that **ship inside nilearn** (``nilearn/datasets/data``,
1 mm, 197 × 233 × 189; nothing is downloaded).  The template is skull-stripped, so the rest
of the head is synthesised around the brain:

* a CSF rim, the skull (bone) and the scalp as shells at increasing distance from the brain
  (thicknesses drawn per subject), a soft-tissue face and neck, the spinal canal;
* air-filled paranasal sinuses (frontal, sphenoid, maxillary, nasal cavity), ear canals and
  mastoid air cells as ellipsoids (never inside the brain or its CSF rim), so the background
  field has the strong, realistic inhomogeneities of a real head;
* deep grey-matter nuclei as ellipsoids at MNI coordinates, with a label map
  (:data:`LABELS`), and veins as tubes (superior sagittal sinus following the brain surface,
  straight sinus, internal cerebral veins, a few random cortical veins);
* white matter with a mean susceptibility and an anisotropic part ``Δχ (f fᵀ − I/3)`` along a
  smooth fibre field ``f`` (corpus callosum left-right, internal capsule/corticospinal tract
  superior-inferior, cingulum and longitudinal fasciculi anterior-posterior, corona radiata
  radial; blended as a weighted mean of the dyadics ``f fᵀ`` and reduced to its principal
  eigenvector, so ``f`` is a unit vector).

Every subject gets a seeded smooth random deformation (global scaling about the brain
centre plus a smooth displacement field) and random tissue values, so a cohort varies;
``variation`` (:mod:`qsmprep.simulate.cohort`) adds head size and pose, iron, anisotropy,
fibre-field, vein and lesion variation (lesion labels 16–21).  All
structures are evaluated at the deformed template coordinate of each voxel, so they move with
the anatomy.  Partial volume: every structure has a soft edge one model voxel wide, and
properties mix linearly.

Units and references: χ in ppm **relative to CSF/water** (CSF = 0); air is +9.4 ppm (air ≈
+0.36 ppm, water ≈ −9.05 ppm), bone ≈ −2 ppm.  R2* (1/s) is given at 3 T and scaled linearly
with the field strength by the acquisition (:mod:`qsmprep.simulate.acquisition`).  World
coordinates of the model grid are the subject's head frame (mm, RAS, origin near the anterior
commissure as in MNI space).

Label ids of :data:`LABELS` (``dseg``): 1/2 caudate L/R, 3/4 putamen, 5/6 globus pallidus,
7/8 thalamus, 9/10 red nucleus, 11/12 substantia nigra, 13/14 dentate nucleus, 15 veins
(left = −x in RAS).
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from qsmprep.numerics._checks import as_voxel_size
from qsmprep.numerics.geometry import apply_affine, voxel_sizes

__all__ = ['AIR_CHI', 'LABELS', 'TISSUES', 'Phantom', 'draw_tissue_values', 'fibre_field',
           'load_template', 'make_phantom', 'template_grid']

#: Susceptibility of air relative to water/CSF (ppm).
AIR_CHI = 9.4

#: Nominal tissue properties: χ range (ppm, relative to CSF), proton density, T2* at 3 T (ms).
#: ``chi`` is drawn uniformly in the range per subject; WM also has ``dchi`` = χ∥ − χ⊥.
TISSUES = {
    'gm': {'chi': (0.01, 0.03), 'pd': 0.85, 't2s': 50.0},
    'wm': {'chi': (-0.04, -0.02), 'dchi': (0.01, 0.025), 'pd': 0.70, 't2s': 45.0},
    'csf': {'chi': (0.0, 0.0), 'pd': 1.00, 't2s': 300.0},
    'caudate': {'chi': (0.05, 0.07), 'pd': 0.85, 't2s': 40.0},
    'putamen': {'chi': (0.07, 0.09), 'pd': 0.85, 't2s': 35.0},
    'pallidum': {'chi': (0.15, 0.20), 'pd': 0.80, 't2s': 22.0},
    'thalamus': {'chi': (0.01, 0.03), 'pd': 0.80, 't2s': 45.0},
    'rednucleus': {'chi': (0.10, 0.14), 'pd': 0.80, 't2s': 25.0},
    'substantianigra': {'chi': (0.13, 0.17), 'pd': 0.80, 't2s': 23.0},
    'dentate': {'chi': (0.08, 0.12), 'pd': 0.80, 't2s': 28.0},
    'vein': {'chi': (0.30, 0.45), 'pd': 0.80, 't2s': 15.0},
    'bone': {'chi': (-2.4, -1.8), 'pd': 0.05, 't2s': 1.5},
    'soft': {'chi': (-0.05, 0.05), 'pd': 0.90, 't2s': 35.0},
}

# Deep grey nuclei: (name, tissue, centre (MNI mm, right side; mirrored for left), semi-axes mm)
_NUCLEI = (
    ('caudate', 'caudate', (13.0, 11.0, 10.0), (4.5, 11.0, 7.5)),
    ('putamen', 'putamen', (25.0, 3.0, 1.0), (5.0, 14.0, 9.0)),
    ('pallidum', 'pallidum', (19.0, -3.0, -1.0), (3.5, 8.0, 5.0)),
    ('thalamus', 'thalamus', (11.0, -18.0, 7.0), (6.5, 12.0, 7.5)),
    ('rednucleus', 'rednucleus', (5.0, -20.0, -9.0), (3.0, 3.5, 3.5)),
    ('substantianigra', 'substantianigra', (11.0, -17.0, -13.0), (3.0, 6.5, 2.5)),
    ('dentate', 'dentate', (15.0, -57.0, -35.0), (6.0, 8.0, 5.0)),
)

#: dseg label ids and names (see the module docstring).
LABELS = {0: 'background'}
for _i, (_name, _, _, _) in enumerate(_NUCLEI):
    LABELS[2 * _i + 1] = f'{_name}_L'
    LABELS[2 * _i + 2] = f'{_name}_R'
LABELS[15] = 'veins'
VEIN_LABEL = 15
#: Tissue names of the deep grey nuclei (in :data:`_NUCLEI` order).
NUCLEUS_TISSUES = tuple(t for _, t, _, _ in _NUCLEI)

# Air cavities: (name, centre (MNI mm), semi-axes mm); mirrored where x != 0.
_AIR = (
    ('frontal_sinus', (0.0, 78.0, 6.0), (13.0, 5.0, 9.0)),
    ('sphenoid_sinus', (0.0, 12.0, -38.0), (10.0, 10.0, 8.0)),
    ('nasal_cavity', (0.0, 62.0, -52.0), (8.0, 20.0, 13.0)),
    ('maxillary_sinus', (30.0, 48.0, -56.0), (11.0, 15.0, 13.0)),
    ('ear_canal', (70.0, -22.0, -42.0), (14.0, 4.0, 4.0)),
    ('mastoid', (55.0, -45.0, -52.0), (7.0, 9.0, 9.0)),
)
# ``air='extended'``: larger cavities reaching the bone next to the frontal and temporal
# lobes (clipped like the others to stay outside the CSF rim + 1 mm): a tall frontal sinus,
# ethmoid cells under the frontal lobes, a sphenoid sinus between the temporal poles, and
# mastoid air cells / middle-ear cavity under the temporal lobes.
_AIR_EXTENDED = (
    ('frontal_sinus', (0.0, 70.0, 12.0), (20.0, 9.0, 16.0)),
    ('ethmoid_cells', (12.0, 40.0, -26.0), (7.0, 16.0, 10.0)),
    ('sphenoid_sinus', (0.0, 14.0, -30.0), (16.0, 14.0, 11.0)),
    ('mastoid', (48.0, -38.0, -42.0), (12.0, 15.0, 12.0)),
    ('middle_ear', (50.0, -20.0, -36.0), (8.0, 6.0, 6.0)),
)
_FACE = ((0.0, 50.0, -50.0), (58.0, 45.0, 45.0))       # soft-tissue ellipsoid
_NECK = ((0.0, -30.0), (50.0, 50.0), (-200.0, -55.0))   # elliptic cylinder: centre xy, radii, z
_CANAL = ((0.0, -45.0), 7.0, (-200.0, -66.0))           # spinal canal: centre xy, radius, z
# Model bounding box (MNI mm): the head with neck, plus air.
_BOX = ((-100.0, 100.0), (-136.0, 106.0), (-122.0, 110.0))
# Centre of the deformation (roughly the brain centre, MNI mm).
_CENTRE = np.array([0.0, -18.0, 10.0])


# ----------------------------------------------------------------------------------------
# template
# ----------------------------------------------------------------------------------------

_TEMPLATE_FILES = {
    't1': 'mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz',
    'gm': 'mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz',
    'wm': 'mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz',
}


def _nilearn_data_dir():
    spec = importlib.util.find_spec('nilearn')
    if spec is None or not spec.submodule_search_locations:
        raise ImportError('nilearn is required for the phantom anatomy (pip install nilearn)')
    return Path(next(iter(spec.submodule_search_locations))) / 'datasets' / 'data'


@functools.lru_cache(maxsize=1)
def load_template():
    """The 1 mm MNI152 2009c template bundled with nilearn (read from disk, no download).

    Reads the files behind :func:`nilearn.datasets.load_mni152_template`,
    ``load_mni152_gm_template``, ``load_mni152_wm_template`` and ``load_mni152_brain_mask``
    directly with nibabel (importing ``nilearn.datasets`` costs seconds), with the same
    processing: each map divided by its maximum, brain mask = template > 0.2.

    Returns
    -------
    dict
        ``gm``, ``wm`` (probability, float32), ``brain`` (float32 0/1), ``t1`` (float32),
        ``affine`` (4 × 4, MNI mm).  Arrays are read-only and cached.
    """
    import nibabel as nib

    folder = _nilearn_data_dir()
    out = {}
    for key, name in _TEMPLATE_FILES.items():
        img = nib.load(folder / name)
        a = np.asarray(img.get_fdata(dtype=np.float32), dtype=np.float32)
        out[key] = a / a.max()
        out['affine'] = np.asarray(img.affine, dtype=float)
    out['brain'] = (out['t1'] > 0.2).astype(np.float32)
    for v in out.values():
        v.setflags(write=False)
    return out


@functools.lru_cache(maxsize=4)
def _template_at(resolution: float):
    """Template maps block-averaged to about ``resolution`` mm (anti-aliasing), cached."""
    tpl = load_template()
    k = max(1, int(np.floor(resolution + 1e-6)))
    affine = tpl['affine'].copy()
    out = {}
    for name in ('gm', 'wm', 'brain'):
        a = tpl[name]
        if k > 1:
            shp = tuple(-(-n // k) * k for n in a.shape)
            p = np.zeros(shp, np.float32)
            p[:a.shape[0], :a.shape[1], :a.shape[2]] = a
            a = p.reshape(shp[0] // k, k, shp[1] // k, k, shp[2] // k, k).mean(axis=(1, 3, 5))
        out[name] = np.ascontiguousarray(a, dtype=np.float32)
    if k > 1:
        # a block of k voxels starting at index 0 has its centre at (k - 1)/2
        affine[:3, :3] *= k
        affine[:3, 3] += tpl['affine'][:3, :3] @ np.full(3, (k - 1) / 2.0)
    out['affine'] = affine
    return out


def template_grid(resolution):
    """Affine and shape of the model grid covering the head box at ``resolution`` mm.

    >>> A, shape = template_grid(2.0)
    >>> shape, float(A[0, 0]), A[:3, 3].tolist()
    ((101, 122, 117), 2.0, [-100.0, -136.0, -122.0])
    """
    vs = as_voxel_size(resolution)
    lo = np.array([b[0] for b in _BOX])
    hi = np.array([b[1] for b in _BOX])
    shape = tuple(int(n) for n in np.floor((hi - lo) / vs + 1e-6).astype(int) + 1)
    A = np.eye(4)
    A[:3, :3] = np.diag(vs)
    A[:3, 3] = lo
    return A, shape


# ----------------------------------------------------------------------------------------
# random draws
# ----------------------------------------------------------------------------------------

def draw_tissue_values(rng):
    """Draw the per-subject tissue values from :data:`TISSUES`.

    Returns
    -------
    dict
        ``{tissue: {'chi': ppm, 'pd': ..., 'r2star': 1/s at 3 T[, 'dchi': ppm]}}``;
        proton density and T2* vary by ±5 % around the nominal values.

    >>> v = draw_tissue_values(np.random.default_rng(0))
    >>> 0.15 <= v['pallidum']['chi'] <= 0.20 and 0.01 <= v['wm']['dchi'] <= 0.025
    True
    """
    out = {}
    for name, t in TISSUES.items():
        lo, hi = t['chi']
        d = {'chi': float(rng.uniform(lo, hi)) if hi > lo else float(lo),
             'pd': float(t['pd'] * rng.uniform(0.95, 1.05)),
             'r2star': float(1e3 / (t['t2s'] * rng.uniform(0.95, 1.05)))}
        if 'dchi' in t:
            d['dchi'] = float(rng.uniform(*t['dchi']))
        out[name] = d
    return out


def _smooth_displacement(shape, spacing, amplitude, rng, *, coarse_mm=16.0):
    """Smooth random displacement (mm), shape ``(3, *shape)``, max norm ``amplitude``."""
    cshape = tuple(max(3, int(np.ceil(n * s / coarse_mm)) + 1) for n, s in zip(shape, spacing,
                                                                                strict=True))
    u = rng.standard_normal((3, *cshape))
    u = np.stack([ndimage.gaussian_filter(c, 1.0, mode='nearest') for c in u])
    norm = np.sqrt((u ** 2).sum(0)).max()
    u *= amplitude / max(norm, 1e-12)
    zoom = [n / c for n, c in zip(shape, cshape, strict=True)]
    out = np.empty((3, *shape), np.float32)
    for d in range(3):
        z = ndimage.zoom(u[d].astype(np.float32), zoom, order=1, mode='nearest',
                         grid_mode=True)
        out[d] = z[:shape[0], :shape[1], :shape[2]]
    return out


# ----------------------------------------------------------------------------------------
# fibre field
# ----------------------------------------------------------------------------------------

def _g(t, w):
    return np.exp(-(t / w) ** 2)


def fibre_field(x, y, z, weights=None):
    """Smooth unit fibre directions at MNI coordinates (mm), shape ``(*x.shape, 3)``.

    A weighted mean of the dyadics ``f_k f_kᵀ`` of a few tract models (corpus callosum
    ``±x`` near the midline, internal capsule/corticospinal tract ``±z``, cingulum and
    superior/inferior longitudinal fasciculi ``±y``, a radial corona-radiata background),
    reduced to its principal eigenvector (sign is irrelevant: only ``f fᵀ`` is used).
    ``weights`` (6 factors, optional) multiply the tract weights in that order
    (callosum, capsule, cingulum, SLF, ILF, radial).

    >>> f = fibre_field(np.array([0.0, 22.0, 36.0]), np.array([-5.0, -8.0, -20.0]),
    ...                 np.array([22.0, 10.0, 28.0]))
    >>> np.abs(f).argmax(axis=1).tolist()  # callosum LR, capsule SI, SLF AP
    [0, 2, 1]
    """
    x, y, z = (np.asarray(a, dtype=np.float32) for a in (x, y, z))
    ax = np.abs(x)
    one = np.ones_like(x)
    zero = np.zeros_like(x)
    tracts = []
    # corpus callosum: an arch over y, left-right
    zc = 22.0 - 0.006 * (y + 5.0) ** 2
    w = 3.0 * _g(x, 16.0) * _g(z - zc, 7.0) * np.exp(-((y + 5.0) / 38.0) ** 4)
    tracts.append((w, (one, zero, zero)))
    # internal capsule / corticospinal tract: superior-inferior, fanning slightly laterally
    w = 2.0 * _g(ax - 22.0, 7.0) * _g(y + 8.0, 14.0) * _g(z - 10.0, 35.0)
    tracts.append((w, (np.sign(x) * 0.25, -0.15 * one, one)))
    # cingulum: anterior-posterior above the callosum
    w = 1.5 * _g(ax - 8.0, 4.0) * _g(z - 32.0, 6.0) * _g(y + 10.0, 40.0)
    tracts.append((w, (zero, one, 0.1 * one)))
    # superior longitudinal fasciculus
    w = 2.0 * _g(ax - 36.0, 8.0) * _g(z - 28.0, 9.0) * _g(y + 20.0, 35.0)
    tracts.append((w, (zero, one, zero)))
    # inferior longitudinal / fronto-occipital fasciculus
    w = 2.0 * _g(ax - 38.0, 8.0) * _g(z + 5.0, 9.0) * _g(y + 40.0, 40.0)
    tracts.append((w, (zero, one, -0.1 * one)))
    # radial background (corona radiata)
    r = np.stack([x - _CENTRE[0], y - _CENTRE[1], z - _CENTRE[2]])
    tracts.append((0.3 * one, tuple(r)))
    if weights is not None:
        tracts = [(np.float32(k) * w, v) for k, (w, v) in zip(weights, tracts, strict=True)]
    M = np.zeros((*x.shape, 3, 3), np.float32)
    wsum = np.zeros_like(x)
    for w, v in tracts:
        v = np.stack(np.broadcast_arrays(*v), axis=-1).astype(np.float32)
        v /= np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-6)
        M += w[..., None, None] * (v[..., :, None] * v[..., None, :])
        wsum += w
    M /= wsum[..., None, None]
    _, vec = np.linalg.eigh(M)
    return np.ascontiguousarray(vec[..., :, -1])


# ----------------------------------------------------------------------------------------
# phantom
# ----------------------------------------------------------------------------------------

@dataclass(eq=False)
class Phantom:
    """A subject's head on the model grid (world = head frame, mm).

    Attributes
    ----------
    affine : (4, 4) array
        Model-grid affine (axis-aligned, RAS mm).
    chi_mean : (X, Y, Z) float32
        Isotropic (mean) susceptibility in ppm relative to CSF, everywhere (air +9.4).
    chi_aniso : (X, Y, Z, 6) float32
        Traceless anisotropic part ``Δχ·w_WM·(f fᵀ − I/3)`` (zero outside white matter),
        components ``[χ11, χ12, χ13, χ22, χ23, χ33]`` in the head (world) frame.
    brain : (X, Y, Z) bool
        Brain mask (sources of the *local* field).
    labels : (X, Y, Z) uint8
        Deep grey matter and vein labels (:data:`LABELS`).
    pd, r2star : (X, Y, Z) float32
        Proton density (a.u., CSF = 1) and R2* (1/s) at 3 T.
    tissue_values : dict
        The drawn tissue values (:func:`draw_tissue_values`), JSON-serialisable.
    centre : (3,) array
        Brain centre of mass (mm), the centre of the head rotations.
    deformation : dict
        Scale, displacement amplitude, shell thicknesses (and the cohort pose, Jacobian).
    lesions : list of dict
        Lesions painted (``variation`` of :func:`make_phantom`): class, label, centre (mm,
        head frame), radii, axes, χ; empty without.
    """

    affine: np.ndarray
    chi_mean: np.ndarray
    chi_aniso: np.ndarray
    brain: np.ndarray
    labels: np.ndarray
    pd: np.ndarray
    r2star: np.ndarray
    tissue_values: dict = field(default_factory=dict)
    centre: np.ndarray = field(default_factory=lambda: np.zeros(3))
    deformation: dict = field(default_factory=dict)
    lesions: list = field(default_factory=list)

    @property
    def shape(self):
        return self.chi_mean.shape

    @property
    def voxel_size(self):
        return voxel_sizes(self.affine)

    def tensor(self):
        """Full tensor ``χ_mean·I + χ_aniso`` (X, Y, Z, 6), ppm."""
        T = self.chi_aniso.copy()
        for c in (0, 3, 5):
            T[..., c] += self.chi_mean
        return T

    def bounding_box(self, mask):
        """World-coordinate corners (8, 3) of the voxel bounding box of ``mask``."""
        idx = np.argwhere(mask)
        lo, hi = idx.min(0) - 1, idx.max(0) + 1
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1])
                            for c in (lo[2], hi[2])], dtype=float)
        return apply_affine(self.affine, corners)

    def head_mask(self):
        """Everything that is not air (χ differs from air or PD > 0)."""
        return (np.abs(self.chi_mean - AIR_CHI) > 1e-3) | (self.pd > 1e-3)

    def _cached(self, key, make):
        cache = self.__dict__.setdefault('_cache', {})
        if key not in cache:
            cache[key] = make()
        return cache[key]

    def head_points(self):
        """World coordinates (mm) of boundary voxels of the head (cached)."""
        return self._cached('head_points',
                            lambda: _surface_points(self.head_mask(), self.affine, stride=3))

    def brain_points(self):
        """World coordinates (mm) of boundary voxels of the brain (cached)."""
        return self._cached('brain_points',
                            lambda: _surface_points(self.brain, self.affine, stride=2))

    def brain_float(self):
        """Brain mask as float32 (cached, for interpolation)."""
        return self._cached('brain_float', lambda: self.brain.astype(np.float32))

    def warm_cache(self):
        """Compute the cached helpers now (before forking worker processes)."""
        self.head_points()
        self.brain_points()
        self.brain_float()
        for c in range(6):
            self.aniso_component(c)

    def aniso_component(self, c):
        """Contiguous copy of component ``c`` of :attr:`chi_aniso` (cached)."""
        return self._cached(('aniso', c),
                            lambda: np.ascontiguousarray(self.chi_aniso[..., c]))


def _surface_points(mask, affine, stride=2):
    """World coordinates of (a subsample of) the boundary voxels of ``mask``."""
    edge = mask & ~ndimage.binary_erosion(mask)
    idx = np.argwhere(edge)[::stride]
    return apply_affine(affine, idx)


def _soft_inside(signed, width):
    """Fraction inside for a signed distance (mm, negative inside), edge ``width`` mm."""
    return np.clip(0.5 - signed / width, 0.0, 1.0).astype(np.float32)


def _paint(arrays, values, f, sl=(slice(None),) * 3):
    """Mix ``values`` into ``arrays`` with fraction ``f`` (in place, on slices ``sl``)."""
    for a, v in zip(arrays, values, strict=True):
        sub = a[sl]
        sub *= 1.0 - f
        sub += f * np.float32(v)


class _Coords:
    """Template (MNI) coordinates of every model voxel after the subject's deformation."""

    def __init__(self, affine, shape, scale, disp, matrix=None):
        self.affine, self.shape, self.scale, self.disp = affine, shape, scale, disp
        self.umax = float(np.sqrt((disp ** 2).sum(0)).max()) if disp is not None else 0.0
        # matrix: the linear part A of x = C + A (t - C) (pose @ diag(scale)); None: diag
        self.matrix = None if matrix is None else np.asarray(matrix, float)
        self.inverse = None if matrix is None else np.linalg.inv(self.matrix)

    def world(self, sl):
        axes = []
        for d in range(3):
            idx = np.arange(self.shape[d])[sl[d]].astype(np.float32)
            axes.append(self.affine[d, d] * idx + self.affine[d, 3])
        return np.meshgrid(*axes, indexing='ij')

    def template(self, sl=(slice(None),) * 3):
        """Template coordinates ``φ(x) = C + (x − C)/s + u(x)`` on slices ``sl``."""
        X = self.world(sl)
        out = []
        if self.matrix is not None:
            B = self.inverse
            rel = [(X[e] - _CENTRE[e]).astype(np.float32) for e in range(3)]
            for d in range(3):
                t = np.float32(_CENTRE[d]) + sum(np.float32(B[d, e]) * rel[e]
                                                 for e in range(3))
                if self.disp is not None:
                    t = t + self.disp[d][sl]
                out.append(t.astype(np.float32))
            return out
        for d in range(3):
            t = _CENTRE[d] + (X[d] - _CENTRE[d]) / self.scale[d]
            if self.disp is not None:
                t = t + self.disp[d][sl]
            out.append(t.astype(np.float32))
        return out

    def box_slices(self, lo, hi):
        """Model-grid slices that contain every voxel whose template coordinate is in box."""
        sl = []
        if self.matrix is not None:
            m = self.umax + 2
            corners = np.array([[a, b, c] for a in (lo[0] - m, hi[0] + m)
                                for b in (lo[1] - m, hi[1] + m) for c in (lo[2] - m, hi[2] + m)])
            w = _CENTRE + (corners - _CENTRE) @ self.matrix.T
            for d in range(3):
                i0 = int(np.floor((w[:, d].min() - self.affine[d, 3]) / self.affine[d, d]))
                i1 = int(np.ceil((w[:, d].max() - self.affine[d, 3]) / self.affine[d, d])) + 1
                sl.append(slice(max(i0, 0), min(max(i1, 0), self.shape[d])))
            return tuple(sl)
        for d in range(3):
            a = _CENTRE[d] + (np.array([lo[d], hi[d]]) - self.umax - 2 - _CENTRE[d]) * \
                self.scale[d]
            b = _CENTRE[d] + (np.array([lo[d], hi[d]]) + self.umax + 2 - _CENTRE[d]) * \
                self.scale[d]
            w0, w1 = min(a.min(), b.min()), max(a.max(), b.max())
            i0 = int(np.floor((w0 - self.affine[d, 3]) / self.affine[d, d]))
            i1 = int(np.ceil((w1 - self.affine[d, 3]) / self.affine[d, d])) + 1
            sl.append(slice(max(i0, 0), min(max(i1, 0), self.shape[d])))
        return tuple(sl)


def _ellipsoid(coords, centre, radii, res):
    """(slices, fraction) of a soft-edged ellipsoid in template coordinates."""
    c, r = np.asarray(centre), np.asarray(radii)
    sl = coords.box_slices(c - r, c + r)
    if any(s.stop <= s.start for s in sl):
        return sl, None
    t = coords.template(sl)
    rho = np.sqrt(sum(((t[d] - c[d]) / r[d]) ** 2 for d in range(3)))
    # signed distance approximated by (ρ − 1)·min radius
    return sl, _soft_inside((rho - 1.0) * r.min(), res)


def _tube(coords, p0, p1, radius, res):
    """(slices, fraction) of a soft-edged straight tube (capsule) from p0 to p1 (mm)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    lo, hi = np.minimum(p0, p1) - radius, np.maximum(p0, p1) + radius
    sl = coords.box_slices(lo, hi)
    if any(s.stop <= s.start for s in sl):
        return sl, None
    t = coords.template(sl)
    d = p1 - p0
    L2 = max(float(d @ d), 1e-12)
    s = np.clip(sum((t[i] - p0[i]) * d[i] for i in range(3)) / L2, 0.0, 1.0)
    dist = np.sqrt(sum((t[i] - (p0[i] + s * d[i])) ** 2 for i in range(3)))
    return sl, _soft_inside(dist - radius, res)


@functools.lru_cache(maxsize=1)
def _template_depth():
    """Depth (mm) inside the 1 mm template brain, and the surface-shell voxel centres."""
    tpl = load_template()
    depth = ndimage.distance_transform_edt(tpl['brain'] > 0).astype(np.float32)
    shell = np.argwhere((depth >= 3.0) & (depth < 4.5))
    world = shell @ tpl['affine'][:3, :3].T + tpl['affine'][:3, 3]
    return depth, world


def _vein_segments(rng, n_cortical):
    """Vein polylines (template mm) as a list of (p0, p1, radius)."""
    tpl = load_template()
    b = tpl['brain'] > 0
    A = tpl['affine']
    segs = []
    # superior sagittal sinus: 4 mm under the midline brain surface, from front to back
    ix = round((0.0 - A[0, 3]) / A[0, 0])
    pts = []
    for y in range(50, -96, -12):
        iy = round((y - A[1, 3]) / A[1, 1])
        col = np.nonzero(b[ix, iy, :])[0]
        if col.size:
            pts.append((0.0, float(y), float(col.max() * A[2, 2] + A[2, 3] - 4.0)))
    segs += [(p, q, 2.5) for p, q in itertools.pairwise(pts)]
    # straight sinus (vein of Galen to the confluence) and internal cerebral veins
    segs.append(((0.0, -46.0, 6.0), (0.0, -82.0, 0.0), 2.0))
    for sx in (-3.0, 3.0):
        segs.append(((sx, -2.0, 17.0), (sx, -40.0, 10.0), 1.3))
    # random cortical veins: chords between surface-shell points 18-30 mm apart
    _, shell = _template_depth()
    for _ in range(n_cortical):
        p0 = shell[rng.integers(shell.shape[0])]
        dist = np.linalg.norm(shell - p0, axis=1)
        cand = np.nonzero((dist > 18.0) & (dist < 30.0))[0]
        if cand.size == 0:
            continue
        p1 = shell[cand[rng.integers(cand.size)]]
        segs.append((tuple(p0), tuple(p1), float(rng.uniform(0.9, 1.4))))
    return segs


def _push_forward(f, coords, sl, sub, res):
    """Fibre directions pushed forward by the warp: ``f ∝ (Dφ)⁻¹ f_template``.

    ``Dφ = A⁻¹ + ∇u`` is the Jacobian of the subject → template map on the slices ``sl``
    (central differences of the displacement), evaluated where ``sub`` is true.  Returns
    the unit directions and the smallest ``det Dφ`` there (> 0: the warp folds nowhere).
    """
    B = coords.inverse if coords.inverse is not None else np.diag(1.0 / coords.scale)
    n = f.shape[0]
    J = np.broadcast_to(B.astype(np.float32), (n, 3, 3)).copy()
    if coords.disp is not None:
        for d in range(3):
            grads = np.gradient(coords.disp[d][sl], res)
            for e in range(3):
                J[:, d, e] += grads[e][sub]
            del grads
    v = np.linalg.solve(J, f[..., None])[..., 0]
    v /= np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
    det = float(np.linalg.det(J).min()) if n else 1.0
    return np.ascontiguousarray(v, dtype=np.float32), det


def _jitter_fibres(f, sub, res, max_deg, rng, *, coarse_mm=24.0):
    """Turn unit directions ``f`` (at the voxels ``sub`` of a box) by a smooth random
    rotation field: rotation vector ``ω(x)``, ``|ω| <= max_deg`` degrees (Rodrigues)."""
    w = _smooth_displacement(sub.shape, (res,) * 3, np.deg2rad(max_deg), rng,
                             coarse_mm=coarse_mm)
    w = np.stack([c[sub] for c in w], axis=-1).astype(np.float64)
    theta = np.linalg.norm(w, axis=-1, keepdims=True)
    k = w / np.maximum(theta, 1e-12)
    v = f.astype(np.float64)
    out = v * np.cos(theta) + np.cross(k, v) * np.sin(theta) + \
        k * np.sum(k * v, axis=-1, keepdims=True) * (1.0 - np.cos(theta))
    return np.ascontiguousarray(out / np.linalg.norm(out, axis=-1, keepdims=True),
                                dtype=np.float32)


def _ellipsoid_fraction(affine, shape, centre, radii, axes, res, sub=4, box=None):
    """(slices, fraction) of an ellipsoid in world mm, by ``sub``³ supersampling per voxel
    (on the slices ``box`` if given)."""
    radii = np.asarray(radii, float)
    c_vox = (np.asarray(centre, float) - affine[:3, 3]) / np.diag(affine)[:3]
    ext = radii.max() / res + 1.0
    lo = np.maximum(np.floor(c_vox - ext).astype(int), 0)
    hi = np.minimum(np.ceil(c_vox + ext).astype(int) + 1, shape)
    if box is not None:
        lo, hi = np.array([b.start for b in box]), np.array([b.stop for b in box])
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    if any(b <= a for a, b in zip(lo, hi, strict=True)):
        return sl, None
    off = (np.arange(sub) + 0.5) / sub - 0.5
    axes_v = [(np.arange(a, b)[:, None] + off[None, :]).ravel() * res + affine[d, 3] -
              centre[d] for d, (a, b) in enumerate(zip(lo, hi, strict=True))]
    X, Y, Z = np.meshgrid(*axes_v, indexing='ij')
    Q = np.asarray(axes, float)  # columns: principal axes
    q = sum(((X * Q[0, k] + Y * Q[1, k] + Z * Q[2, k]) / radii[k]) ** 2 for k in range(3))
    inside = (q <= 1.0).astype(np.float32)
    n = [b - a for a, b in zip(lo, hi, strict=True)]
    frac = inside.reshape(n[0], sub, n[1], sub, n[2], sub).mean(axis=(1, 3, 5))
    return sl, frac.astype(np.float32)


# lesions are placed largest first, each class at its own kind of site
_LESION_ORDER = ('haemorrhage', 'ms_rim', 'ms_iso', 'calcification', 'microbleed')


def _paint_lesions(specs, rng, props, aniso, labels, brain, wm_core, par_core, affine, res,
                   values):
    """Place and paint lesions (in place); returns their records (JSON-serialisable).

    White-matter lesions (``ms_*``) are centred where the distance to the nearest
    non-white-matter or labelled voxel is at least their extent + 1 mm; the others in
    parenchyma (GM or WM ≥ 0.8, no label) as deep as that; lesions do not overlap.
    Partial volume: exact-ish ellipsoid fractions (4³ sub-samples per voxel), mixed
    linearly like every other structure; labels where the fraction is ≥ 1/2 and at the
    voxel of largest fraction (so a sub-voxel microbleed still has one).
    """
    idx = np.argwhere(brain)
    b0, b1 = idx.min(0), idx.max(0) + 1
    box = tuple(slice(int(a), int(b)) for a, b in zip(b0, b1, strict=True))
    free = (labels[box] == 0) & brain[box]
    depth = {'wm': ndimage.distance_transform_edt(wm_core[box] & free, sampling=res),
             'par': ndimage.distance_transform_edt(par_core[box] & free, sampling=res)}
    wm_chi = float(values['wm']['chi'])
    placed, out = [], []
    order = sorted(range(len(specs)), key=lambda i: (_LESION_ORDER.index(specs[i]['class']), i))
    for i in order:
        spec = dict(specs[i])
        radii = np.asarray(spec['radii_mm'], float)
        ext = float(radii.max() + spec.get('rim_mm', 0.0))
        dmap = depth['wm' if spec['class'].startswith('ms') else 'par']
        need = min(ext + 1.0, 0.8 * float(dmap.max()))
        cand = np.argwhere(dmap >= need)
        centre = None
        for _ in range(200):
            v = cand[rng.integers(cand.shape[0])] + b0 + rng.uniform(-0.5, 0.5, 3)
            c = affine[:3, :3] @ v + affine[:3, 3]
            if all(np.linalg.norm(c - pc) >= ext + pe + 1.5 for pc, pe in placed):
                centre = c
                break
        if centre is None:
            continue
        placed.append((centre, ext))
        rec = {**spec, 'centre_mm': [float(x) for x in centre]}
        if 'delta_chi_ppm' in spec:
            rec['chi_ppm'] = wm_chi + spec['delta_chi_ppm']
        shape = labels.shape
        if spec['class'] == 'ms_rim':
            rec['rim_chi_ppm'] = wm_chi + spec['rim_delta_chi_ppm']
            sl, fo = _ellipsoid_fraction(affine, shape, centre, radii + spec['rim_mm'],
                                         spec['axes'], res)
            _, fc = _ellipsoid_fraction(affine, shape, centre, radii, spec['axes'], res,
                                        box=sl)
            fo, fc = fo * brain[sl], fc * brain[sl]
            # (1 - f_outer)·tissue + (f_outer - f_core)·rim + f_core·core
            fc = np.minimum(fc, fo)
            for arr, vr, vc in zip(props, (rec['rim_chi_ppm'], spec['pd'], spec['rim_r2star']),
                                   (rec['chi_ppm'], spec['pd'], spec['r2star']), strict=True):
                sub = arr[sl]
                sub *= 1.0 - fo
                sub += (fo - fc) * np.float32(vr) + fc * np.float32(vc)
            aniso[sl] *= (1.0 - fo)[..., None]
            lab = labels[sl]
            rim = (fo >= 0.5) & (fc < 0.5)
            if not rim.any():
                rim = np.zeros_like(rim)
                rim[np.unravel_index(np.argmax(fo - fc), fo.shape)] = True
            lab[rim] = spec['rim_label']
            core = fc >= 0.5
            core[np.unravel_index(np.argmax(fc), fc.shape)] = True
            lab[core] = spec['label']
            rec['labelled_voxels'] = int(core.sum())
            rec['rim_labelled_voxels'] = int((lab == spec['rim_label']).sum())
        else:
            sl, f = _ellipsoid_fraction(affine, shape, centre, radii, spec['axes'], res)
            f = f * brain[sl]
            _paint([a[sl] for a in props], (rec['chi_ppm'], spec['pd'], spec['r2star']), f)
            aniso[sl] *= (1.0 - f)[..., None]
            lab = labels[sl]
            core = f >= 0.5
            core[np.unravel_index(np.argmax(f), f.shape)] = True
            lab[core] = spec['label']
            rec['labelled_voxels'] = int(core.sum())
        rec['volume_mm3'] = float(4.0 / 3.0 * np.pi * np.prod(radii))
        out.append(rec)
    return out


def make_phantom(resolution=2.0, *, rng, deformation: float = 3.0, scale_range=0.04,
                 cortical_veins: int = 6, threads: int = 2,
                 air: str = 'standard', variation: dict | None = None) -> Phantom:
    """Build one subject's head phantom on an isotropic model grid.

    Parameters
    ----------
    resolution : float
        Model-grid voxel size (mm), isotropic.  The acquisitions sample this grid; use the
        finest acquisition voxel size (or finer).
    rng : numpy.random.Generator
        Source of every random choice (deformation, tissue values, shells, veins).
    deformation : float
        Maximum amplitude (mm) of the smooth random displacement field (0: none).
    scale_range : float
        Global scaling per axis drawn in ``1 ± scale_range`` (0: none).
    cortical_veins : int
        Number of random cortical veins.
    threads : int
        Threads for the template interpolation.
    air : {'standard', 'extended'}
        Air cavities: the standard set, or with the larger cavities next to the frontal
        and temporal lobes added (``_AIR_EXTENDED``).  Adds no random draws.
    variation : dict, optional
        Cohort variation (``anatomy`` merged with ``lesions`` of
        :func:`qsmprep.simulate.cohort.draw_subject`): ``scale`` (3, replaces the scale
        drawn from ``rng``), ``pose`` (3 × 3 rotation of the anatomy about the brain
        centre), ``iron_factor`` (per nucleus tissue), ``msa_scale``, ``tract_weights``,
        ``fibre_jitter_deg`` and ``fibre_seed`` (a smooth random rotation of the fibres),
        ``cortical_veins``, ``vein_radius_scale``, ``lesions`` and ``lesion_seed``.  The
        fibre directions are pushed forward by the inverse local Jacobian of the warp.
        None (default): the phantom of earlier versions, bit for bit.

    Returns
    -------
    Phantom

    Examples
    --------
    >>> ph = make_phantom(6.0, rng=np.random.default_rng(0))
    >>> ph.chi_mean.shape == ph.brain.shape == ph.labels.shape
    True
    >>> round(float(ph.chi_mean[0, 0, 0]), 6)  # air, relative to water
    9.4
    >>> bool(np.abs(ph.chi_mean[ph.brain]).max() < 0.5)  # brain tissue, relative to CSF
    True
    """
    res = float(as_voxel_size(resolution)[0])
    affine, shape = template_grid(res)
    values = draw_tissue_values(rng)
    scale = 1.0 + rng.uniform(-scale_range, scale_range, 3) if scale_range else np.ones(3)
    matrix = None
    var = variation
    if var is not None:
        scale = np.asarray(var['scale'], float)
        matrix = np.asarray(var.get('pose', np.eye(3)), float) @ np.diag(scale)
        cortical_veins = int(var.get('cortical_veins', cortical_veins))
        for tis in NUCLEUS_TISSUES:
            k = float(var.get('iron_factor', {}).get(tis, 1.0))
            lo, hi = TISSUES[tis]['chi']
            values[tis]['chi'] = 0.5 * (lo + hi) * k
            values[tis]['r2star'] *= k
        values['wm']['dchi'] *= float(var.get('msa_scale', 1.0))
    disp = (_smooth_displacement(shape, (res,) * 3, deformation, rng)
            if deformation > 0 else None)
    coords = _Coords(affine, shape, scale, disp, matrix)

    # -- template maps at the deformed coordinates
    tpl = _template_at(res)
    inv = np.linalg.inv(tpl['affine'])
    T = coords.template()
    vox = [inv[d, 0] * T[0] + inv[d, 1] * T[1] + inv[d, 2] * T[2] + inv[d, 3] for d in range(3)]
    del T

    def sample(name, coordinates=vox):
        return ndimage.map_coordinates(tpl[name], coordinates, order=1, mode='constant',
                                       cval=0.0, output=np.float32)

    with ThreadPoolExecutor(max(1, threads)) as ex:
        gm, wm, brainp = ex.map(sample, ('gm', 'wm', 'brain'))
    del vox, sample
    brain = brainp >= 0.5
    del brainp
    gm = np.where(brain, gm, 0.0).astype(np.float32)
    wm = np.where(brain, wm, 0.0).astype(np.float32)
    s = gm + wm
    over = s > 1.0
    gm[over] /= s[over]
    wm[over] /= s[over]
    csf = np.where(brain, 1.0 - gm - wm, 0.0).astype(np.float32)
    del s, over
    if variation is not None and variation.get('lesions'):
        wm_core = wm >= 0.5            # lesion sites: white matter, parenchyma
        par_core = (gm + wm) >= 0.8
    else:
        wm_core = par_core = None

    # -- head outside the brain: shells by distance from brain ∪ spinal canal
    chi = np.full(shape, AIR_CHI, np.float32)
    pd = np.zeros(shape, np.float32)
    r2 = np.zeros(shape, np.float32)
    props = (chi, pd, r2)

    def tissue(name):
        v = values[name]
        return (v['chi'], v['pd'], v['r2star'])

    (cx, cy), crad, (cz0, cz1) = _CANAL
    sl_c, f_canal = _tube(coords, (cx, cy, cz0), (cx, cy, cz1), crad, res)
    core = brain.copy()
    if f_canal is not None:
        core[sl_c] |= f_canal >= 0.5
    dist = ndimage.distance_transform_edt(~core, sampling=res).astype(np.float32)
    rim = float(rng.uniform(2.0, 3.5))
    skull = rim + float(rng.uniform(5.0, 8.0))
    scalp = skull + float(rng.uniform(4.0, 7.0))
    # distance is measured to the nearest core voxel centre: the boundary is ~res/2 out
    d = dist - 0.5 * res
    _paint(props, tissue('soft'), _soft_inside(d - scalp, res))
    sl, f = _ellipsoid(coords, *_FACE, res)
    if f is not None:
        _paint([a[sl] for a in props], tissue('soft'), f)
    (nx, ny), (rx, ry), (nz0, nz1) = _NECK
    sl = coords.box_slices((nx - rx, ny - ry, nz0), (nx + rx, ny + ry, nz1))
    t = coords.template(sl)
    rho = np.sqrt(((t[0] - nx) / rx) ** 2 + ((t[1] - ny) / ry) ** 2)
    f = _soft_inside((rho - 1.0) * min(rx, ry), res) * _soft_inside(t[2] - nz1, 4.0 * res)
    _paint([a[sl] for a in props], tissue('soft'), f)
    _paint(props, tissue('bone'), _soft_inside(d - skull, res))
    _paint(props, tissue('csf'), _soft_inside(d - rim, res))
    if f_canal is not None:  # spinal cord and CSF in the canal
        _paint([a[sl_c] for a in props], tissue('csf'), f_canal * ~brain[sl_c])
    if air not in ('standard', 'extended'):
        raise ValueError(f"air must be 'standard' or 'extended'; got {air!r}")
    # air stays outside the CSF rim + 1 mm of bone; 'extended' lets it reach that distance
    # at full fraction (the standard ramp reaches full air one model voxel further out)
    gap = rim + (1.0 if air == 'standard' else 1.0 - res)
    protect = np.clip((d - gap) / res, 0.0, 1.0).astype(np.float32)
    for _name, c, r in _AIR + (_AIR_EXTENDED if air == 'extended' else ()):
        for sx in ((-1.0, 1.0) if c[0] else (1.0,)):
            sl, f = _ellipsoid(coords, (sx * c[0], c[1], c[2]), r, res)
            if f is not None:
                _paint([a[sl] for a in props], (AIR_CHI, 0.0, 0.0), f * protect[sl])
    del protect, d, dist, core

    # -- brain tissue
    b = brain.astype(np.float32)
    wmv, gmv, csfv = values['wm'], values['gm'], values['csf']
    for a, key in zip(props, ('chi', 'pd', 'r2star'), strict=True):
        inside = gm * gmv[key] + wm * wmv[key] + csf * csfv[key]
        a *= 1.0 - b
        a += inside
    del gm, csf, b

    # -- white-matter anisotropy along the fibre field
    jdet = None
    aniso = np.zeros((*shape, 6), np.float32)
    idx = np.nonzero(wm > 0.01)
    if idx[0].size:
        sl = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
        t = coords.template(sl)
        sub = wm[sl] > 0.01
        f = fibre_field(t[0][sub], t[1][sub], t[2][sub],
                        weights=None if var is None else var.get('tract_weights'))
        if var is not None:
            f, jdet = _push_forward(f, coords, sl, sub, res)
            if var.get('fibre_jitter_deg', 0.0) > 0:
                from qsmprep.simulate.cohort import _rng as _seeded

                f = _jitter_fibres(f, sub, res, var['fibre_jitter_deg'],
                                   _seeded(*var['fibre_seed']))
        amp = values['wm']['dchi'] * wm[sl][sub]
        pairs = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
        for c, (p, q) in enumerate(pairs):
            comp = amp * (f[:, p] * f[:, q] - (1.0 / 3.0 if p == q else 0.0))
            view = aniso[(*sl, c)]
            view[sub] = comp
    del wm

    # -- deep grey nuclei and veins (labels where the fraction is >= 1/2)
    labels = np.zeros(shape, np.uint8)
    for i, (_name, tis, c, r) in enumerate(_NUCLEI):
        for side, sx in ((0, -1.0), (1, 1.0)):
            sl, f = _ellipsoid(coords, (sx * c[0], c[1], c[2]), r, res)
            if f is None:
                continue
            f = f * brain[sl]
            _paint([a[sl] for a in props], tissue(tis), f)
            aniso[sl] *= (1.0 - f)[..., None]
            labels[sl][f >= 0.5] = 2 * i + side + 1
    rscale = 1.0 if var is None else float(var.get('vein_radius_scale', 1.0))
    for p0, p1, rad in _vein_segments(rng, cortical_veins):
        sl, f = _tube(coords, p0, p1, rad * rscale, res)
        if f is None:
            continue
        f = f * brain[sl]
        _paint([a[sl] for a in props], tissue('vein'), f)
        aniso[sl] *= (1.0 - f)[..., None]
        labels[sl][f >= 0.5] = VEIN_LABEL

    lesions = []
    if var is not None and var.get('lesions'):
        from qsmprep.simulate.cohort import _rng as _seeded

        lesions = _paint_lesions(var['lesions'], _seeded(*var['lesion_seed']), props, aniso,
                                 labels, brain, wm_core, par_core, affine, res, values)
    centre = apply_affine(affine, np.argwhere(brain).mean(0))
    deform = {'scale': [float(v) for v in scale], 'max_displacement_mm': float(coords.umax),
              'rim_mm': rim, 'skull_mm': skull - rim, 'scalp_mm': scalp - skull}
    if var is not None:
        deform['pose'] = np.asarray(var.get('pose', np.eye(3)), float).tolist()
        deform['min_jacobian_det_wm'] = jdet
    return Phantom(affine=affine, chi_mean=chi, chi_aniso=aniso, brain=brain, labels=labels,
                   pd=pd, r2star=r2, tissue_values=values, centre=centre, deformation=deform,
                   lesions=lesions)
