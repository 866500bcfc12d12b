"""Training data from qsmprep derivatives (or the simulator's truth): pairs, 3D patches and 2D
slices, stored as shards with a manifest.  NumPy and nibabel only: no TensorFlow here.

A *pair* is one orientation of one subject: the local field (ppm, V-SHARP output), its mask,
the B0 direction in the voxel frame of that field (sidecar ``B0_dir``) and the label, the
apparent susceptibility ``χ_app = bᵀχb`` on the same native grid
(``desc-apparent_Chimap``).  With ``channels=2`` the label gets a second channel, the field
not explained by ``χ_app`` (``f = M·(δ − D⊗χ_app)``; MoDL-QSM's ``f13,23``, which for an
anisotropic tensor is the field of the off-diagonal terms, §10 of the physics reference).

A dataset directory holds ``manifest.json`` and shards ``<split>-NNNN.npz`` (uncompressed,
so reading one array does not decompress the others).  Each shard stores, for ``n``
samples:

==============  ===================  ================================================
array           shape                meaning
==============  ===================  ================================================
``field``       ``(n, *S)`` float32  local field (ppm), zero outside the mask
``mask``        ``(n, *S)`` uint8    mask
``label``       ``(n, *S, C)``       label channels (ppm): χ_app [, f]
``b0``          ``(n, 3)`` float32   B0 unit vector in the sample's voxel frame
``voxel_size``  ``(n, 3)`` float32   mm
``source``      ``(n,)`` int32       index into ``manifest['sources']``
``origin``      ``(n, 3|4)`` int32   3D: patch corner; 2D: (axis, index, row, col)
``flip``        ``(n,)`` int8        0 none, 1 horizontal (last axis), 2 vertical
==============  ===================  ================================================

``S`` is the patch shape (3D) or the crop (2D).  The manifest records the sources, the
subject split, the geometry, the seed, the normalisation statistics (computed on the
training subjects only, inside the masks) and the shards.  The same inputs, options and
seed give byte-identical shards and manifest.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from qsmprep.io import derivatives as _contract
from qsmprep.numerics.geometry import b0_direction_from_affine, voxel_sizes

__all__ = [
    'MANIFEST',
    'Pair',
    'ShardReader',
    'build_dataset',
    'crop_slice',
    'epoch_order',
    'find_pairs',
    'load_pair',
    'patch_origins',
    'read_manifest',
    'select_patches',
    'select_slices',
    'split_subjects',
]

MANIFEST = 'manifest.json'
FORMAT_VERSION = 1
SOURCES = ('derivatives', 'simulate-truth')

_ENT = re.compile(r'^sub-(?P<sub>[A-Za-z0-9]+)(_ses-(?P<ses>[A-Za-z0-9]+))?'
                  r'(_acq-(?P<acq>[A-Za-z0-9]+))?')

# file name suffixes (after the entity prefix) per source: field, mask, label
_NAMES = {  # qsmprep's own derivatives: from the derivatives contract
    'derivatives': tuple(_contract.suffix(k) for k in ('local_field', 'local_mask', 'apparent')),
    'simulate-truth': ('_desc-local_field.nii.gz', '_desc-brain_mask.nii.gz',
                       '_desc-apparent_Chimap.nii.gz'),
}


@dataclass(frozen=True)
class Pair:
    """One orientation of one subject: input field, mask and label files and geometry."""

    subject: str
    session: str | None
    orientation: str
    field: str
    mask: str
    label: str
    b0_direction: tuple[float, float, float]
    voxel_size: tuple[float, float, float]
    shape: tuple[int, int, int]
    source: str = 'derivatives'

    @property
    def key(self) -> str:
        ses = f'_ses-{self.session}' if self.session else ''
        return f'sub-{self.subject}{ses}_acq-{self.orientation}'

    def as_dict(self) -> dict:
        return asdict(self)


def _b0_from(sidecar: Path, affine) -> tuple[float, float, float]:
    from qsmprep.numerics._checks import as_direction

    if sidecar.is_file():
        meta = json.loads(sidecar.read_text())
        if 'B0_dir' in meta:
            return tuple(float(v) for v in as_direction(meta['B0_dir'], name='B0_dir'))
    return tuple(float(v) for v in b0_direction_from_affine(affine))


def find_pairs(root, *, source: str = 'derivatives', subjects=None) -> list[Pair]:
    """All complete (field, mask, label) pairs under a derivatives dataset ``root``.

    Parameters
    ----------
    root : path
        ``derivatives``: a qsmprep derivatives dataset (the folder holding ``sub-*``);
        ``simulate-truth``: the simulator's ``derivatives/qsmprep-simulate`` folder.
    source : {'derivatives', 'simulate-truth'}
        Which file names to look for (module docstring).  ``simulate-truth`` pairs the true
        local field with the true apparent susceptibility and brain mask: clean labels.
    subjects : iterable of str, optional
        Participant labels (without ``sub-``) to keep.

    Returns
    -------
    list of Pair
        Sorted by subject, session and orientation.  Orientations without a label (fewer
        than 6 orientations: no STI) are skipped.
    """
    import nibabel as nb

    if source not in SOURCES:
        raise ValueError(f'source must be one of {SOURCES}; got {source!r}')
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f'derivatives folder not found: {root}')
    f_suf, m_suf, l_suf = _NAMES[source]
    keep = None if subjects is None else {str(s).removeprefix('sub-') for s in subjects}
    pairs = []
    for fpath in sorted(root.glob(f'sub-*/**/anat/*{f_suf}')):
        prefix = fpath.name[:-len(f_suf)]
        m = _ENT.match(prefix)
        if m is None or m['acq'] is None:
            continue
        if keep is not None and m['sub'] not in keep:
            continue
        mpath, lpath = fpath.with_name(prefix + m_suf), fpath.with_name(prefix + l_suf)
        if not (mpath.is_file() and lpath.is_file()):
            continue
        img = nb.load(str(fpath))
        if len(img.shape) != 3:
            raise ValueError(f'{fpath}: expected a 3D local field, got shape {img.shape}')
        vs = tuple(float(v) for v in voxel_sizes(img.affine))
        b0 = _b0_from(fpath.with_name(fpath.name.replace('.nii.gz', '.json')), img.affine)
        pairs.append(Pair(subject=m['sub'], session=m['ses'], orientation=m['acq'],
                          field=str(fpath.absolute()), mask=str(mpath.absolute()),
                          label=str(lpath.absolute()), b0_direction=b0, voxel_size=vs,
                          shape=tuple(int(n) for n in img.shape), source=source))
    pairs.sort(key=lambda p: (p.subject, p.session or '', p.orientation))
    return pairs


def load_pair(pair: Pair, *, channels: int = 1, padding: int = 16):
    """Arrays of one pair: ``(field, mask, label)``.

    ``field`` (float32, ppm) and every label channel are zero outside ``mask`` (bool).
    ``label`` has shape ``(*shape, channels)``: channel 0 is χ_app; channel 1 (when
    ``channels == 2``) is ``M·(δ − D⊗χ_app)`` computed with
    :func:`qsmprep.numerics.forward.dipole_forward` on the whole volume (``padding`` voxels
    of zeros per side against FFT wrap-around).
    """
    import nibabel as nb

    if channels not in (1, 2):
        raise ValueError(f'channels must be 1 or 2; got {channels!r}')

    def read(path):
        return np.asarray(nb.load(path).dataobj, dtype=np.float32)

    mask = read(pair.mask) > 0
    field_ = read(pair.field) * mask
    chi = read(pair.label) * mask
    for name, arr in (('field', field_), ('label', chi)):
        if arr.shape != mask.shape:
            raise ValueError(f'{pair.key}: {name} shape {arr.shape} != mask shape {mask.shape}')
        if not np.all(np.isfinite(arr)):
            raise ValueError(f'{pair.key}: {name} has non-finite values')
    label = [chi]
    if channels == 2:
        from qsmprep.numerics.forward import dipole_forward

        induced = dipole_forward(chi, pair.voxel_size, pair.b0_direction, padding=padding)
        label.append((field_ - induced) * mask)
    return (field_.astype(np.float32), mask,
            np.stack(label, axis=-1).astype(np.float32))


def split_subjects(subjects, *, validation_fraction: float = 0.2, validation_subjects=None,
                   seed: int = 0):
    """Split participant labels into ``(train, validation)``, never sharing a subject.

    ``validation_subjects`` (labels) overrides the random choice; otherwise
    ``round(validation_fraction · n)`` subjects (at least 1 when ``n ≥ 2`` and the fraction is
    positive) are drawn with ``seed``.

    >>> split_subjects(['01', '02', '03', '04', '05'], validation_fraction=0.2, seed=3)
    (['01', '02', '03', '04'], ['05'])
    """
    subs = sorted({str(s).removeprefix('sub-') for s in subjects})
    if validation_subjects is not None:
        val = sorted({str(s).removeprefix('sub-') for s in validation_subjects})
        missing = set(val) - set(subs)
        if missing:
            raise ValueError(f'validation subjects not in the data: {sorted(missing)}')
    else:
        if not 0 <= validation_fraction < 1:
            raise ValueError('validation_fraction must be in [0, 1); got '
                             f'{validation_fraction!r}')
        n_val = round(validation_fraction * len(subs))
        if validation_fraction > 0 and len(subs) >= 2:
            n_val = max(1, n_val)
        n_val = min(n_val, len(subs) - 1) if subs else 0
        perm = np.random.default_rng(seed).permutation(len(subs))
        val = sorted(subs[i] for i in perm[:n_val])
    train = [s for s in subs if s not in set(val)]
    if not train:
        raise ValueError('no training subject left after the validation split')
    return train, val


# ---------------------------------------------------------------------------------------------
# 3D patches
def patch_origins(shape, patch_shape, stride):
    """Corners of overlapping patches covering ``shape`` (the last patch ends at the edge).

    Axes shorter than the patch get the single origin 0 (the volume is zero-padded).

    >>> patch_origins((10, 4, 8), (4, 4, 4), (3, 3, 4))
    [(0, 0, 0), (0, 0, 4), (3, 0, 0), (3, 0, 4), (6, 0, 0), (6, 0, 4)]
    """
    axes = []
    for n, p, s in zip(shape, patch_shape, stride, strict=True):
        if p < 1 or s < 1:
            raise ValueError(f'patch and stride must be positive; got {patch_shape}, {stride}')
        if n <= p:
            axes.append([0])
            continue
        starts = list(range(0, n - p + 1, s))
        if starts[-1] != n - p:
            starts.append(n - p)
        axes.append(starts)
    return [(int(a), int(b), int(c)) for a in axes[0] for b in axes[1] for c in axes[2]]


def _pad_to(x, shape):
    """Zero-pad the leading 3 axes of ``x`` at the end up to ``shape`` (no-op if large)."""
    pads = [(0, max(0, int(p) - n)) for n, p in zip(x.shape[:3], shape, strict=True)]
    if not any(b for _, b in pads):
        return x
    return np.pad(x, pads + [(0, 0)] * (x.ndim - 3))


def select_patches(mask, *, patch_shape=(48, 48, 48), stride=(24, 24, 24),
                   min_inside: float = 0.2):
    """Origins of the patches with at least ``min_inside`` of their voxels in ``mask``."""
    mask = _pad_to(np.asarray(mask, bool), patch_shape)
    out = []
    size = float(np.prod(patch_shape))
    for o in patch_origins(mask.shape, patch_shape, stride):
        sl = tuple(slice(a, a + p) for a, p in zip(o, patch_shape, strict=True))
        if mask[sl].sum() / size >= min_inside:
            out.append(o)
    return out


# ---------------------------------------------------------------------------------------------
# 2D slices
def crop_slice(volume, axis: int, index: int, row: int, col: int, crop=(128, 128)):
    """The ``crop`` window at ``(row, col)`` of slice ``index`` along ``axis``.

    Negative offsets and windows past the edge are zero-filled, so slices smaller than the
    crop are padded.  Extra trailing axes (channels) are kept.
    """
    sl = np.take(np.asarray(volume), int(index), axis=int(axis))
    out = np.zeros(tuple(crop) + sl.shape[2:], dtype=sl.dtype)
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + crop[0], sl.shape[0]), min(col + crop[1], sl.shape[1])
    if r1 > r0 and c1 > c0:
        out[r0 - row:r1 - row, c0 - col:c1 - col] = sl[r0:r1, c0:c1]
    return out


def _crop_offset(n, c, rng):
    """Random offset of a length-``c`` window in ``n`` (centred, negative, when ``n < c``)."""
    if n <= c:
        return -((c - n) // 2)
    return int(rng.integers(0, n - c + 1))


def select_slices(mask, *, rng, crop=(128, 128), max_outside: float = 0.75,
                  min_gap: int = 4, slices_per_axis: int | None = None, axes=(0, 1, 2)):
    """Random 2D slices along ``axes`` following the thesis' rules.

    For each axis the slice indices are visited in random order; a slice is kept when

    * at least ``min_gap`` slices lie between it and every slice kept before on that axis
      (``|i − j| > min_gap``), and
    * at most ``max_outside`` of the crop's voxels *that lie inside the image* are outside the
      mask (zero padding of small slices is not counted, so the rule means the same at 1 and
      2 mm).

    The crop window is drawn uniformly over the slice (centred when the slice is smaller).

    Returns
    -------
    list of (axis, index, row, col)
    """
    mask = np.asarray(mask, bool)
    out = []
    for axis in axes:
        n = mask.shape[axis]
        picked: list[int] = []
        for idx in rng.permutation(n):
            idx = int(idx)
            if slices_per_axis is not None and len(picked) >= slices_per_axis:
                break
            if any(abs(idx - j) <= min_gap for j in picked):
                continue
            shp = [s for d, s in enumerate(mask.shape) if d != axis]
            row, col = _crop_offset(shp[0], crop[0], rng), _crop_offset(shp[1], crop[1], rng)
            m = crop_slice(mask, axis, idx, row, col, crop)
            in_image = (min(row + crop[0], shp[0]) - max(row, 0)) * \
                (min(col + crop[1], shp[1]) - max(col, 0))
            if in_image <= 0 or 1.0 - m.sum() / in_image > max_outside:
                continue
            picked.append(idx)
            out.append((int(axis), idx, int(row), int(col)))
    return out


# ---------------------------------------------------------------------------------------------
# shards and manifest
class _ShardWriter:
    def __init__(self, out_dir: Path, split: str, shard_size: int):
        self.out_dir, self.split, self.shard_size = out_dir, split, shard_size
        self.buf: dict[str, list] = {}
        self.shards: list[dict] = []

    def add(self, **sample):
        for k, v in sample.items():
            self.buf.setdefault(k, []).append(v)
        if len(self.buf['field']) >= self.shard_size:
            self.flush()

    def flush(self):
        if not self.buf.get('field'):
            return
        name = f'{self.split}-{len(self.shards):04d}.npz'
        arrays = {k: np.stack(v) for k, v in self.buf.items()}
        with open(self.out_dir / name, 'wb') as fh:
            np.savez(fh, **arrays)
        self.shards.append({'file': name, 'split': self.split, 'n': len(self.buf['field'])})
        self.buf = {}


@dataclass
class _Stats:
    n: int = 0
    s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ss: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def add(self, values):  # values: (N, C)
        v = np.asarray(values, np.float64)
        if self.n == 0:
            self.s, self.ss = np.zeros(v.shape[1]), np.zeros(v.shape[1])
        self.n += v.shape[0]
        self.s += v.sum(0)
        self.ss += (v ** 2).sum(0)

    def result(self):
        mean = self.s / max(self.n, 1)
        std = np.sqrt(np.maximum(self.ss / max(self.n, 1) - mean ** 2, 0.0))
        std = np.where(std > 0, std, 1.0)
        return {'mean': [float(x) for x in mean], 'std': [float(x) for x in std],
                'voxels': int(self.n)}


def build_dataset(out_dir, *, pairs=None, root=None, source: str = 'derivatives',
                  kind: str = 'patch3d', channels: int | None = None,
                  patch_shape=(48, 48, 48), stride=None, min_inside: float = 0.2,
                  crop=(128, 128), max_outside: float = 0.75, min_gap: int = 4,
                  slices_per_axis: int | None = None, flip_prob: float | None = None,
                  validation_fraction: float = 0.2, validation_subjects=None,
                  shard_size: int | None = None, seed: int = 0, subjects=None,
                  overwrite: bool = False) -> dict:
    """Extract patches (``kind='patch3d'``) or slices (``'slice2d'``) and write shards.

    Parameters
    ----------
    out_dir : path
        New (or empty) dataset folder; ``overwrite`` replaces an earlier dataset there.
    pairs : list of Pair, optional
        Inputs; default ``find_pairs(root, source=source, subjects=subjects)``.
    kind : {'patch3d', 'slice2d'}
    channels : {1, 2}, optional
        Label channels (default 2 for 3D: χ_app and its complementary field; 1 for 2D).
    patch_shape, stride, min_inside
        3D geometry: patch size (voxels), stride (default half the patch) and the minimum
        fraction of a patch's voxels inside the mask.
    crop, max_outside, min_gap, slices_per_axis
        2D rules (:func:`select_slices`).
    flip_prob : float, optional
        Probability of a flip (2D default 0.4: horizontal or vertical with equal chance;
        3D default 0: a flip of axis d also negates ``b0[d]``, which keeps the sample
        physically consistent).
    validation_fraction, validation_subjects
        Subject-level split (:func:`split_subjects`).
    shard_size : int, optional
        Samples per shard (default 32 for 3D, 256 for 2D, about 50 MB each).
    seed : int
        The split, slice choice, crops and flips depend only on ``seed`` and the inputs.

    Returns
    -------
    dict
        The manifest (also written to ``out_dir/manifest.json``).
    """
    from qsmprep import __version__

    if kind not in ('patch3d', 'slice2d'):
        raise ValueError(f"kind must be 'patch3d' or 'slice2d'; got {kind!r}")
    is3d = kind == 'patch3d'
    channels = channels or (2 if is3d else 1)
    flip_prob = (0.0 if is3d else 0.4) if flip_prob is None else float(flip_prob)
    if not 0 <= flip_prob <= 1:
        raise ValueError(f'flip_prob must be in [0, 1]; got {flip_prob!r}')
    patch_shape = tuple(int(p) for p in np.broadcast_to(patch_shape, (3,)))
    stride = tuple(int(s) for s in np.broadcast_to(
        stride if stride is not None else [max(1, p // 2) for p in patch_shape], (3,)))
    crop = tuple(int(c) for c in np.broadcast_to(crop, (2,)))
    shard_size = int(shard_size or (32 if is3d else 256))
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite or not (out_dir / MANIFEST).is_file():
            raise FileExistsError(f'{out_dir} is not empty (pass overwrite=True to replace a '
                                  'dataset written by qsmprep)')
        for f in out_dir.glob('*.npz'):
            f.unlink()
        (out_dir / MANIFEST).unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    if pairs is None:
        if root is None:
            raise ValueError('pass pairs or root')
        pairs = find_pairs(root, source=source, subjects=subjects)
    pairs = sorted(pairs, key=lambda p: (p.subject, p.session or '', p.orientation))
    if not pairs:
        raise ValueError('no (local field, mask, apparent susceptibility) pairs found: run the '
                         'participant level with >= 6 orientations first')
    train_subs, val_subs = split_subjects([p.subject for p in pairs],
                                          validation_fraction=validation_fraction,
                                          validation_subjects=validation_subjects, seed=seed)
    writers = {'train': _ShardWriter(out_dir, 'train', shard_size),
               'validation': _ShardWriter(out_dir, 'validation', shard_size)}
    fstats, lstats = _Stats(), _Stats()
    counts = {'train': 0, 'validation': 0}
    for src_index, pair in enumerate(pairs):
        rng = np.random.default_rng([seed, src_index])
        split = 'validation' if pair.subject in val_subs else 'train'
        fld, msk, lab = load_pair(pair, channels=channels)
        if split == 'train':
            fstats.add(fld[msk][:, None])
            lstats.add(lab[msk])
        common = {'b0': np.asarray(pair.b0_direction, np.float32),
                  'voxel_size': np.asarray(pair.voxel_size, np.float32),
                  'source': np.int32(src_index)}
        if is3d:
            fld, msk, lab = (_pad_to(a, patch_shape) for a in (fld, msk, lab))
            for o in select_patches(msk, patch_shape=patch_shape, stride=stride,
                                    min_inside=min_inside):
                sl = tuple(slice(a, a + p) for a, p in zip(o, patch_shape, strict=True))
                f, m, lb, b0 = fld[sl], msk[sl], lab[sl], common['b0'].copy()
                flip = 0
                if flip_prob and rng.random() < flip_prob:
                    ax = int(rng.integers(0, 3))
                    f, m, lb = np.flip(f, ax), np.flip(m, ax), np.flip(lb, ax)
                    b0[ax] = -b0[ax]
                    flip = ax + 1
                writers[split].add(field=np.ascontiguousarray(f), mask=m.astype(np.uint8),
                                   label=np.ascontiguousarray(lb), **{**common, 'b0': b0},
                                   origin=np.asarray(o, np.int32), flip=np.int8(flip))
                counts[split] += 1
        else:
            for axis, idx, row, col in select_slices(
                    msk, rng=rng, crop=crop, max_outside=max_outside, min_gap=min_gap,
                    slices_per_axis=slices_per_axis):
                f, m, lb = (crop_slice(a, axis, idx, row, col, crop) for a in (fld, msk, lab))
                flip = 0
                if flip_prob and rng.random() < flip_prob:
                    flip = 1 if rng.random() < 0.5 else 2
                    ax = 1 if flip == 1 else 0
                    f, m, lb = np.flip(f, ax), np.flip(m, ax), np.flip(lb, ax)
                writers[split].add(field=np.ascontiguousarray(f), mask=m.astype(np.uint8),
                                   label=np.ascontiguousarray(lb), **common,
                                   origin=np.asarray((axis, idx, row, col), np.int32),
                                   flip=np.int8(flip))
                counts[split] += 1
    for w in writers.values():
        w.flush()
    if counts['train'] == 0:
        raise ValueError('no training sample passed the filters (lower min_inside / '
                         'max_outside, or use smaller patches)')
    manifest = {
        'format_version': FORMAT_VERSION,
        'generated_by': f'qsmprep {__version__}',
        'kind': kind,
        'channels': channels,
        'label_channels': ['chi_apparent', 'complementary_field'][:channels],
        'units': 'ppm',
        'seed': int(seed),
        'source': pairs[0].source,
        'geometry': ({'patch_shape': list(patch_shape), 'stride': list(stride),
                      'min_inside': float(min_inside), 'flip_prob': flip_prob}
                     if is3d else
                     {'crop': list(crop), 'max_outside': float(max_outside),
                      'min_gap': int(min_gap), 'slices_per_axis': slices_per_axis,
                      'axes': [0, 1, 2], 'flip_prob': flip_prob}),
        'split': {'train': train_subs, 'validation': val_subs,
                  'validation_fraction': float(validation_fraction)},
        'counts': counts,
        'normalization': {'field': fstats.result(), 'label': lstats.result()},
        'sources': [{**p.as_dict(), 'split': 'validation' if p.subject in val_subs
                     else 'train'} for p in pairs],
        'shards': writers['train'].shards + writers['validation'].shards,
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + '\n')
    return manifest


def read_manifest(path) -> dict:
    """Load ``manifest.json`` (``path`` is the file or its dataset folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f'no dataset manifest at {path}')
    manifest = json.loads(path.read_text())
    if manifest.get('format_version') != FORMAT_VERSION:
        raise ValueError(f'{path}: unsupported dataset format '
                         f'{manifest.get("format_version")!r} (expected {FORMAT_VERSION})')
    manifest['_root'] = str(path.parent.absolute())
    return manifest


# ---------------------------------------------------------------------------------------------
# deterministic batch order
def epoch_order(shard_sizes, epoch: int, seed: int, *, shuffle: bool = True,
                window: int = 4, rounds: int = 1) -> np.ndarray:
    """Global sample indices for one epoch, a function of ``(seed, epoch)`` only.

    Shards are visited in random order in groups of ``window`` and the samples of each group
    are shuffled together, so a reader caching ``window`` shards never re-reads one within a
    group.  ``rounds`` > 1 concatenates several independent orders (epochs longer than the
    data).

    >>> order = epoch_order([3, 2], epoch=0, seed=0)
    >>> sorted(order.tolist())
    [0, 1, 2, 3, 4]
    """
    sizes = np.asarray(shard_sizes, int)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    if not shuffle:
        return np.arange(int(sizes.sum()))
    out = []
    for r in range(rounds):
        rng = np.random.default_rng([int(seed), int(epoch), r])
        perm = rng.permutation(len(sizes))
        for g in range(0, len(perm), window):
            idx = np.concatenate([offsets[s] + np.arange(sizes[s]) for s in perm[g:g + window]])
            out.append(rng.permutation(idx))
    return np.concatenate(out) if out else np.zeros(0, int)


class ShardReader:
    """Random access to the samples of one split, with a small cache of open shards.

    Parameters
    ----------
    manifest : dict or path
        A manifest (:func:`read_manifest`) or its path.
    split : {'train', 'validation'}
    cache : int
        Shards kept in memory.
    """

    def __init__(self, manifest, split: str = 'train', *, cache: int = 4):
        if not isinstance(manifest, dict):
            manifest = read_manifest(manifest)
        self.manifest = manifest
        self.root = Path(manifest['_root'])
        self.split = split
        self.shards = [s for s in manifest['shards'] if s['split'] == split]
        self.sizes = [int(s['n']) for s in self.shards]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        self._cache: OrderedDict[int, dict] = OrderedDict()
        self._cache_size = max(1, int(cache))

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _shard(self, i: int) -> dict:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        with np.load(self.root / self.shards[i]['file']) as z:
            data = {k: z[k] for k in z.files}
        self._cache[i] = data
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return data

    def get(self, indices, keys=('field', 'mask', 'label', 'b0', 'voxel_size')) -> dict:
        """Stack the samples with global ``indices`` (within this split)."""
        indices = np.asarray(indices, int)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f'sample index out of range [0, {len(self)})')
        shard = np.searchsorted(self.offsets, indices, side='right') - 1
        out = {k: [] for k in keys}
        for s, i in zip(shard, indices, strict=True):
            data = self._shard(int(s))
            for k in keys:
                out[k].append(data[k][i - self.offsets[s]])
        return {k: np.stack(v) for k, v in out.items()}

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, len(self) // int(batch_size))

    def batches(self, *, batch_size: int, seed: int = 0, start_step: int = 0,
                steps: int | None = None, steps_per_epoch: int | None = None,
                shuffle: bool = True, keys=('field', 'mask', 'label', 'b0', 'voxel_size')):
        """Yield batches for global steps ``start_step, start_step + 1, …``.

        The batch of step ``s`` is a function of ``(seed, s)`` only, so a resumed run that
        starts at step ``s`` sees exactly the batches an uninterrupted run would.  Without
        ``shuffle`` the split is read once in order (the last batch may be smaller).
        """
        if len(self) == 0:
            return
        if not shuffle:
            for i in range(0, len(self), batch_size):
                yield self.get(np.arange(i, min(i + batch_size, len(self))), keys)
            return
        spe = int(steps_per_epoch or self.steps_per_epoch(batch_size))
        need = spe * batch_size
        rounds = -(-need // len(self))
        step, cached = int(start_step), (None, None)
        while steps is None or step < start_step + steps:
            epoch, b = divmod(step, spe)
            if cached[0] != epoch:
                cached = (epoch, epoch_order(self.sizes, epoch, seed, rounds=rounds,
                                             window=self._cache_size))
            yield self.get(cached[1][b * batch_size:(b + 1) * batch_size], keys)
            step += 1
