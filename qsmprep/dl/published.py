"""The published MoDL-QSM weights (Feng et al. 2021) as a user-supplied model.

The authors' repository (``Ruimin-Feng/MoDL-QSM`` on GitHub) has no licence, so qsmprep
ships none of its code, weights or normalisation values.  A user who has the files passes
``--model path/to/logs/last.h5`` (a Keras-2 HDF5 *weights* file, TensorFlow 1.15 / Keras
2.2.5); this module is qsmprep's own implementation of the network and of its inference, from
the description in the paper and the repository's README, which reads the arrays from that
file with ``h5py`` (Keras 3 cannot read a Keras-2 weights file of a model it did not build).

The network (physics reference §11; ``A x = D⊗x₀ + x₁``, ``Aᴴ y = [D⊗y, y]``)::

    x⁰ = denorm(G(norm(t·Aᴴy)·M)·M)
    x^k = denorm(G(norm(x^{k−1} − t·AᴴA x^{k−1} + t·Aᴴy)·M)·M),   k = 1, 2
    out = x²·M

with one learned step ``t``, one CNN ``G`` shared by the three passes (Conv 3³×32 + ReLU,
8 residual blocks [Conv 3³ → BN → ReLU → Conv 3³ → BN → add → ReLU], two Conv 1³×32 + ReLU,
Conv 1³×2 with bias), ``norm``/``denorm`` the per-channel standardisation with the training
labels' mean and standard deviation (``NormFactor.mat``: ``CosTrnMean``, ``CosTrnStd``,
read from the user's copy next to the weights or one folder up), ``M`` the mask.  The two
channels are ``[χ33, f13,23]``: χ33 in ppm (the tensor component along B0; for isotropic
tissue χ) and the field in ppm induced by χ13 and χ23, which the operator adds to the
dipole field of χ33.  The dipole kernel ``D`` is that of the acquisition's B0 direction in
the voxel frame; the network was trained with B0 along the image z axis only.

Inference as in the repository's ``model_test`` (whole-volume mode):

* the field (ppm) and mask are taken on an even grid (odd axes: here one zero slice is
  *appended*, and removed afterwards; the original deletes the first slice);
* voxels other than 1 mm isotropic are resampled to about 1 mm by zero-filling/cropping
  the centred spectrum onto an even grid of ``ceil(N·Δ)`` voxels (:func:`fourier_resample`,
  :func:`resampled_shape`), the network then runs with an all-ones mask, and both outputs
  are resampled back by undoing the spectrum change (the input grid exactly; the original
  recomputes a size and centre-crops, which differs when the rounding does) and masked.
  The dipole kernel uses the intermediate grid's true voxel size ``N·Δ/N'`` (the original
  assumes exactly 1 mm).  The original's ``inter_data`` does not rescale after changing
  the spectrum's size, which multiplies the field by the voxel volume in mm³ on the way in
  (and divides on the way out); qsmprep keeps the amplitude (``legacy_scaling=True``
  reproduces the original);
* ``G`` (receptive-field radius :data:`RECEPTIVE_RADIUS` voxels) runs on the whole grid, or
  on overlapping slabs whose inner borders are discarded when the grid is larger than
  ``max_voxels`` (:func:`tile_layout`, :func:`qsmprep.dl.windows.sliding_window`), which
  gives the whole-volume result exactly with bounded memory; the FFTs run on the whole grid.

The 48³ patch-then-stitch mode of ``model_test`` is not ported.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qsmprep.io.errors import MissingInputError, UsageError

__all__ = [
    'DESC',
    'ITERATIONS',
    'RECEPTIVE_RADIUS',
    'PublishedModel',
    'PublishedWeights',
    'assign_weights',
    'build_denoiser',
    'centre_to_shape',
    'description',
    'find_norm_file',
    'fourier_resample',
    'is_published',
    'load_published',
    'predict_published',
    'read_norm_factor',
    'read_weights',
    'resampled_shape',
    'sha256',
    'tile_layout',
    'unrolled_inference',
]

DESC = 'modlqsmpublished'
"""BIDS ``desc-`` label of the χ maps the published weights give."""
KIND = 'modlqsm-published'
NORM_FILE = 'NormFactor.mat'
ITERATIONS = 3
"""Unrolled iterations (``define_generator(3, …)`` in the original)."""
WIDTH = 32
BLOCKS = 8
RECEPTIVE_RADIUS = 2 * BLOCKS + 1
"""Receptive-field radius of ``G`` in voxels (17 convolutions of size 3)."""
BN_EPSILON = 1e-3  # Keras 2 BatchNormalization default
BN_VARS = ('gamma', 'beta', 'moving_mean', 'moving_variance')
CONV_SHAPES = ((3, 3, 3, 2, WIDTH),) + ((3, 3, 3, WIDTH, WIDTH),) * (2 * BLOCKS) + (
    (1, 1, 1, WIDTH, WIDTH),) * 2 + ((1, 1, 1, WIDTH, 2),)
"""Kernel shapes of ``G``'s 20 convolutions in order; only the last one has a bias (2,)."""
EXPECTED = ('a Keras-2 HDF5 weights file (model.save_weights) with one nested model holding '
            f'{len(CONV_SHAPES)} Conv3D kernels (3x3x3x2x32, 16 x 3x3x3x32x32, 2 x 1x1x1x32x32, '
            f'1x1x1x32x2 with a bias of 2), {2 * BLOCKS} BatchNormalization layers of {WIDTH} '
            "channels (gamma, beta, moving_mean, moving_variance) and one scalar 'step' "
            'weight, as logs/last.h5 of the MoDL-QSM repository')
HINT = ('pass the published MoDL-QSM weights (logs/last.h5 of github.com/Ruimin-Feng/MoDL-QSM) '
        'or a qsmprep model folder (model.keras + model.json)')


# --------------------------------------------------------------------------- the HDF5 file

@dataclass
class PublishedWeights:
    """Arrays of the published network read from its HDF5 file.

    ``conv``: 20 ``(kernel, bias or None)`` in network order; ``bn``: 16 dicts of
    :data:`BN_VARS`; ``step``: the learned step ``t``; ``sources``: for every array, its
    dataset path in the file, keyed like :func:`assign_weights`'s targets
    (``conv3d_<i>/kernel``, ``batch_normalization_<j>/gamma``, ``step``).
    """

    conv: list
    bn: list
    step: float
    sources: dict = field(default_factory=dict)


def sha256(path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def _h5py(path):
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py comes with keras (the dl extra)
        raise UsageError('reading the published MoDL-QSM weights needs h5py, which is not '
                         'installed', path=path,
                         hint="pip install 'qsmprep[dl]' (or pip install h5py)") from None
    return h5py


def _names(attr) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in np.asarray(attr).ravel()]


def _collect(path):
    """``[(group, weight name, array, dataset path)]`` of every layer group of a Keras-2
    weights file."""
    h5py = _h5py(path)
    try:
        f = h5py.File(path, 'r')
    except OSError as exc:
        raise UsageError(f'not an HDF5 file ({exc}); expected {EXPECTED}', path=path,
                         hint=HINT) from None
    with f:
        root = f['model_weights'] if 'model_weights' in f else f  # model.save() files
        if 'layer_names' not in root.attrs:
            found = ', '.join(sorted(root.keys())[:8]) or 'nothing'
            raise UsageError(f"not a Keras-2 weights file (no 'layer_names' attribute; top "
                             f'level: {found}); expected {EXPECTED}', path=path, hint=HINT)
        out = []
        for layer in _names(root.attrs['layer_names']):
            g = root.get(layer)
            if g is None:
                continue
            for name in _names(g.attrs.get('weight_names', [])):
                ds = g.get(name)
                if ds is None:
                    raise UsageError(f'weight {layer}/{name} listed but absent; expected '
                                     f'{EXPECTED}', path=path, hint=HINT)
                out.append((layer, name, np.asarray(ds[()], np.float32),
                            f'{g.name}/{name}'.lstrip('/')))
    return out


def _number(layer: str) -> float:
    tail = layer.rsplit('/', 1)[-1].rsplit('_', 1)[-1]
    return int(tail) if tail.isdigit() else float('inf')


def read_weights(path) -> PublishedWeights:
    """Read and check the published weights (raises :class:`UsageError` naming ``path`` and
    the expected layout when the file is anything else)."""
    path = Path(path)
    entries = _collect(path)
    steps = [e for e in entries if e[1].split('/')[-1].split(':')[0] == 'step']
    step_ids = {id(e) for e in steps}
    cnn: dict[str, dict] = {}  # layer -> {var: (array, source)}
    other = []
    for e in entries:
        if id(e) in step_ids:
            continue
        parts = e[1].split('/')
        if len(parts) < 2:
            other.append(e)
            continue
        var = parts[-1].split(':')[0]
        cnn.setdefault('/'.join(parts[:-1]), {})[var] = (e[2], e[3])
    # network order: Keras numbers auto-named layers in creation order (conv3d_1 … _20,
    # batch_normalization_1 … _16); names without a number keep their order in the file
    ranked = sorted(enumerate(cnn.items()), key=lambda iv: (_number(iv[1][0]), iv[0]))
    convs = [kv for _, kv in ranked if 'kernel' in kv[1]]
    bns = [kv for _, kv in ranked if 'gamma' in kv[1]]
    problems = []
    if len(steps) != 1 or steps[0][2].size != 1:
        problems.append(f"{len(steps)} 'step' weights")
    if len(convs) != len(CONV_SHAPES):
        problems.append(f'{len(convs)} convolution kernels')
    if len(bns) != 2 * BLOCKS:
        problems.append(f'{len(bns)} BatchNormalization layers')
    leftover = [k for k, v in cnn.items() if 'kernel' not in v and 'gamma' not in v]
    if other or leftover:
        problems.append(f'other weights ({", ".join([*leftover, *(e[1] for e in other)][:4])})')
    conv = []
    if not problems:
        for i, ((name, v), shape) in enumerate(zip(convs, CONV_SHAPES, strict=True)):
            want = {'kernel', 'bias'} if i == len(CONV_SHAPES) - 1 else {'kernel'}
            bias = v.get('bias', (None, None))[0]
            if set(v) != want or v['kernel'][0].shape != shape or (
                    bias is not None and bias.shape != (shape[-1],)):
                problems.append(f'{name}: ' + ', '.join(f'{k} {a.shape}' for k, (a, _) in
                                                        v.items()))
                break
            conv.append((v['kernel'][0], bias))
    bn = []
    if not problems:
        for name, v in bns:
            if set(v) != set(BN_VARS) or any(a.shape != (WIDTH,) for a, _ in v.values()):
                problems.append(f'{name}: ' + ', '.join(f'{k} {a.shape}' for k, (a, _) in
                                                        v.items()))
                break
            bn.append({k: v[k][0] for k in BN_VARS})
    if problems:
        raise UsageError(f'not the published MoDL-QSM weights: found {"; ".join(problems)}; '
                         f'expected {EXPECTED}', path=path, hint=HINT)
    sources = {'step': steps[0][3]}
    for i, (_, v) in enumerate(convs, start=1):
        for var, (_, src) in v.items():
            sources[f'conv3d_{i}/{var}'] = src
    for j, (_, v) in enumerate(bns, start=1):
        for var, (_, src) in v.items():
            sources[f'batch_normalization_{j}/{var}'] = src
    step = float(steps[0][2].ravel()[0])
    if not all(np.isfinite(e[2]).all() for e in entries):
        raise UsageError('the weights contain NaN or Inf', path=path, hint=HINT)
    return PublishedWeights(conv=conv, bn=bn, step=step, sources=sources)


def is_published(path) -> bool:
    """Whether ``path`` is an HDF5 file of the published layout (no exception)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        read_weights(path)
    except UsageError:
        return False
    return True


def find_norm_file(weights_path) -> Path:
    """``NormFactor.mat`` next to the weights file, or one folder up (the repository layout
    ``logs/last.h5`` + ``NormFactor.mat``); :class:`MissingInputError` when there is none."""
    weights_path = Path(weights_path)
    candidates = [weights_path.parent / NORM_FILE, weights_path.parent.parent / NORM_FILE]
    for c in candidates:
        if c.is_file():
            return c
    raise MissingInputError(
        f'the published MoDL-QSM weights need their {NORM_FILE} (the mean and standard '
        f'deviation of the training labels), which is neither at {candidates[0]} nor at '
        f'{candidates[1]}', path=weights_path,
        hint=f'copy {NORM_FILE} from the MoDL-QSM repository next to the weights file')


def read_norm_factor(path) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)``, 2 floats each (order ``[χ33, f13,23]``, ppm) from ``NormFactor.mat``."""
    from scipy.io import loadmat

    try:
        m = loadmat(str(path))
        mean = np.asarray(m['CosTrnMean'], np.float64).ravel()
        std = np.asarray(m['CosTrnStd'], np.float64).ravel()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f'not a MoDL-QSM {NORM_FILE} ({type(exc).__name__}: {exc}); expected '
                         'a MATLAB file with CosTrnMean and CosTrnStd of 2 values each',
                         path=path, hint=f'copy {NORM_FILE} from the MoDL-QSM repository'
                         ) from None
    if mean.shape != (2,) or std.shape != (2,) or not (np.isfinite(mean).all()
                                                      and np.isfinite(std).all()
                                                      and (std > 0).all()):
        raise UsageError(f'{NORM_FILE} must hold CosTrnMean and CosTrnStd of 2 finite values '
                         f'each (std > 0); found shapes {mean.shape}, {std.shape}', path=path,
                         hint=f'copy {NORM_FILE} from the MoDL-QSM repository')
    return mean, std


def description(path) -> str:
    """``EstimationAlgorithm`` text of the published weights at ``path`` (no TensorFlow;
    checks the file and finds its ``NormFactor.mat``)."""
    path = Path(path).absolute()
    read_weights(path)
    norm = find_norm_file(path)
    read_norm_factor(norm)
    return (f'MoDL-QSM (Feng et al., NeuroImage 2021;240:118376) with the published weights '
            f'supplied by the user ({path}, SHA-256 {sha256(path)}; {norm.name} SHA-256 '
            f'{sha256(norm)}), run by qsmprep\'s own port of its whole-volume inference '
            f'({ITERATIONS} unrolled iterations, Fourier resampling to 1 mm where the voxels '
            'differ); output channels chi33 (ppm, 0; the desc- Chimap) and the field induced '
            'by chi13 and chi23 (ppm, 1)')


# --------------------------------------------------------------------------- the network

def build_denoiser():
    """The CNN ``G`` of the published network (Keras 3), layers named as in the HDF5 file
    (``conv3d_1`` … ``conv3d_20``, ``batch_normalization_1`` … ``_16``)."""
    import keras

    inp = keras.Input((None, None, None, 2), name='input_1')

    def conv(x, i, size, bias=False, relu=True):
        x = keras.layers.Conv3D(CONV_SHAPES[i - 1][-1], size, padding='same', use_bias=bias,
                                name=f'conv3d_{i}')(x)
        return keras.layers.ReLU(name=f'relu_c{i}')(x) if relu else x

    def bn(x, j):
        return keras.layers.BatchNormalization(axis=4, epsilon=BN_EPSILON,
                                               name=f'batch_normalization_{j}')(x)

    x = conv(inp, 1, 3)
    for b in range(BLOCKS):
        y = keras.layers.ReLU(name=f'relu_b{b + 1}a')(bn(conv(x, 2 * b + 2, 3, relu=False),
                                                       2 * b + 1))
        y = bn(conv(y, 2 * b + 3, 3, relu=False), 2 * b + 2)
        x = keras.layers.ReLU(name=f'relu_b{b + 1}b')(
            keras.layers.Add(name=f'add_b{b + 1}')([x, y]))
    x = conv(x, 2 * BLOCKS + 2, 1)
    x = conv(x, 2 * BLOCKS + 3, 1)
    out = conv(x, 2 * BLOCKS + 4, 1, bias=True, relu=False)
    return keras.Model(inp, out, name='model_1')


def assign_weights(model, weights: PublishedWeights) -> dict:
    """Assign the arrays of ``weights`` to the variables of :func:`build_denoiser`'s model.

    Returns ``{variable path: dataset path in the file}``; raises ``ValueError`` when a
    variable of the model got no array or an array found no variable.
    """
    arrays = {}
    for i, (kernel, bias) in enumerate(weights.conv, start=1):
        arrays[f'conv3d_{i}/kernel'] = kernel
        if bias is not None:
            arrays[f'conv3d_{i}/bias'] = bias
    for j, d in enumerate(weights.bn, start=1):
        for k in BN_VARS:
            arrays[f'batch_normalization_{j}/{k}'] = d[k]
    done = {}
    for var in model.weights:
        key = var.path.split('/', 1)[-1] if var.path.startswith('model_1/') else var.path
        if key not in arrays:
            raise ValueError(f'no array in the file for the variable {var.path}')
        if tuple(var.shape) != arrays[key].shape:
            raise ValueError(f'{var.path}: shape {tuple(var.shape)} != {arrays[key].shape}')
        var.assign(arrays[key])
        done[var.path] = weights.sources.get(key, key)
    unused = set(arrays) - {p.split('/', 1)[-1] if p.startswith('model_1/') else p
                            for p in done}
    if unused:
        raise ValueError(f'arrays of the file without a variable: {sorted(unused)}')
    return done


@dataclass
class PublishedModel:
    """The loaded published network: ``denoiser`` (Keras), step ``t``, label statistics."""

    denoiser: object
    step: float
    mean: np.ndarray
    std: np.ndarray
    path: Path
    norm_file: Path
    sha256: str
    assigned: dict = field(default_factory=dict)

    def meta(self) -> dict:
        """Metadata in the form :func:`qsmprep.dl.infer.load_model` returns."""
        return {'kind': KIND, 'name': DESC, 'inputs': ['field', 'mask'],
                'inference': {'mode': 'whole'}, 'sha256': self.sha256,
                'description': description(self.path),
                'versions': {'weights': str(self.path), 'sha256': self.sha256}}


def load_published(path, *, norm_file=None) -> PublishedModel:
    """Build the network and load the published weights from ``path`` (``NormFactor.mat``
    from ``norm_file`` or :func:`find_norm_file`)."""
    path = Path(path).absolute()
    weights = read_weights(path)
    norm_file = Path(norm_file) if norm_file is not None else find_norm_file(path)
    mean, std = read_norm_factor(norm_file)
    model = build_denoiser()
    assigned = assign_weights(model, weights)
    return PublishedModel(denoiser=model, step=weights.step, mean=mean, std=std, path=path,
                          norm_file=norm_file, sha256=sha256(path), assigned=assigned)


# --------------------------------------------------------------------------- resampling

def resampled_shape(shape, voxel_size, new_voxel_size=1.0) -> tuple[int, ...]:
    """Even grid covering the same field of view at ``new_voxel_size``: ``ceil(N·Δ/Δ')``,
    minus one when odd (``inter_data`` of the original).

    >>> resampled_shape((64, 64, 40), (2.0, 2.0, 2.0))
    (128, 128, 80)
    >>> resampled_shape((256, 256, 60), (0.8594, 0.8594, 2.0))
    (220, 220, 120)
    """
    n = np.asarray(shape, np.float64) * np.broadcast_to(np.asarray(voxel_size, np.float64), 3)
    new = np.ceil(n / np.broadcast_to(np.asarray(new_voxel_size, np.float64), 3) - 1e-6)
    return tuple(int(v) - int(v) % 2 for v in new)


def _centre_slices(n_from, n_to):
    lo = (n_from - n_to) // 2
    return slice(lo, lo + n_to)


def centre_to_shape(x, shape):
    """Centre-crop or zero-pad the leading 3 axes of ``x`` to ``shape`` (the extra voxel of an
    odd difference at the end; ``change_array_size`` of the original for even ones)."""
    x = np.asarray(x)
    for d, n in enumerate(shape):
        m = x.shape[d]
        if n < m:
            x = np.take(x, np.arange(m)[_centre_slices(m, n)], axis=d)
        elif n > m:
            pad = [(0, 0)] * x.ndim
            pad[d] = ((n - m) // 2, n - m - (n - m) // 2)
            x = np.pad(x, pad)
    return x


def fourier_resample(x, voxel_size, new_voxel_size=1.0, *, shape=None,
                     legacy_scaling: bool = False) -> np.ndarray:
    """Resample a real 3-D array on an even grid by zero-filling or cropping its centred
    spectrum (``fftshift(fftn(fftshift(x)))``), onto :func:`resampled_shape` (or ``shape``).

    The voxel at index ``N/2`` keeps its position.  Values are preserved (a band-limited
    signal is interpolated); ``legacy_scaling=True`` omits the factor ``N'/N`` as the original
    ``inter_data`` does.
    """
    from scipy import fft as sfft

    x = np.asarray(x, np.float64)
    if any(n % 2 for n in x.shape):
        raise ValueError(f'fourier_resample needs an even grid; got {x.shape}')
    new = tuple(shape) if shape is not None else resampled_shape(x.shape, voxel_size,
                                                                   new_voxel_size)
    if new == x.shape:
        return x.copy()
    k = sfft.fftshift(sfft.fftn(sfft.fftshift(x)))
    k = centre_to_shape(k, new)
    y = np.real(sfft.fftshift(sfft.ifftn(sfft.fftshift(k))))
    if not legacy_scaling:
        y *= np.prod(new, dtype=np.float64) / np.prod(x.shape, dtype=np.float64)
    return y


# --------------------------------------------------------------------------- inference

def unrolled_inference(field, mask, kernel, denoise, *, step, mean, std,
                       iterations: int = ITERATIONS) -> np.ndarray:
    """The unrolled network on one grid: ``(X, Y, Z, 2)`` ``[χ33, f13,23]`` (ppm).

    ``kernel``: half-spectrum dipole kernel of the grid (``rfftn`` layout); ``denoise``:
    ``(X, Y, Z, 2) -> (X, Y, Z, 2)`` (the CNN ``G``); ``mean``/``std``: the label statistics.
    """
    from qsmprep.numerics.fft import irfftn, rfftn

    shape = field.shape
    m = np.asarray(mask, np.float32)[..., None]
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)

    def a_op(x):
        return irfftn(kernel * rfftn(x[..., 0]) + rfftn(x[..., 1]), shape).astype(np.float32)

    def ah_op(y):
        return np.stack([irfftn(kernel * rfftn(y), shape).astype(np.float32),
                         y.astype(np.float32)], axis=-1)

    y_term = np.float32(step) * ah_op(np.asarray(field, np.float32))
    x = None
    for k in range(iterations):
        z = y_term if k == 0 else x - np.float32(step) * ah_op(a_op(x)) + y_term
        fx = np.asarray(denoise(((z - mean) / std) * m), np.float32) * m
        x = fx * std + mean  # the background holds the mean until the final masking
    return x * m


def tile_layout(shape, max_voxels: int, radius: int = RECEPTIVE_RADIUS + 1):
    """``(patch, overlap, trim)`` per axis for :func:`qsmprep.dl.windows.sliding_window`:
    the whole grid when it has at most ``max_voxels`` voxels, else the longest axis (then the
    next) cut into more slabs, each with ``radius`` voxels of context on inner faces, until a
    tile fits (or no cut reduces it).

    >>> tile_layout((100, 80, 60), 10**6)
    ([100, 80, 60], [0, 0, 0], [0, 0, 0])
    >>> tile_layout((200, 80, 60), 600_000)
    ([103, 80, 60], [36, 0, 0], [18, 0, 0])
    """
    shape = [int(n) for n in shape]
    cuts = [1, 1, 1]

    def patch(d, k):
        return shape[d] if k == 1 else min(shape[d], -(-shape[d] // k) + 2 * radius)

    while np.prod([patch(d, cuts[d]) for d in range(3)], dtype=np.int64) > max_voxels:
        gains = [patch(d, cuts[d]) - patch(d, cuts[d] + 1) for d in range(3)]
        d = int(np.argmax([patch(d, cuts[d]) if gains[d] > 0 else -1 for d in range(3)]))
        if gains[d] <= 0:
            break
        cuts[d] += 1
    sizes = [patch(d, cuts[d]) for d in range(3)]
    tiled = [s < n for s, n in zip(sizes, shape, strict=True)]
    return (sizes, [2 * radius if t else 0 for t in tiled], [radius if t else 0 for t in tiled])


def _tiled(model, max_voxels: int):
    """``G`` on overlapping tiles (:func:`tile_layout`; inner borders of
    :data:`RECEPTIVE_RADIUS` + 1 voxels discarded, so the result is the whole-volume one)."""
    import tensorflow as tf

    from qsmprep.dl.windows import sliding_window

    fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def denoise(x):
        patch, ov, trim = tile_layout(x.shape[:3], max_voxels)
        return sliding_window(lambda b: fn(tf.convert_to_tensor(b['x'])).numpy(),
                              {'x': x.astype(np.float32)}, patch_shape=patch, overlap=ov,
                              trim=trim)

    return denoise


def predict_published(model: PublishedModel, field, mask=None, *, voxel_size=(1.0, 1.0, 1.0),
                      b0_direction=(0.0, 0.0, 1.0), max_voxels: int = 10_000_000,
                      legacy_scaling: bool = False, network_mask: str = 'ones',
                      denoise=None) -> np.ndarray:
    """``(X, Y, Z, 2)`` float32 ``[χ33, f13,23]`` (ppm, zero outside the mask) of a local
    field (ppm) with the published network (module docstring).

    ``max_voxels``: the largest CNN tile (:func:`tile_layout`; about 128 bytes per voxel per
    activation); ``network_mask``: the mask the network sees on the 1 mm grid when the input
    is resampled, ``'ones'`` (the original's) or ``'resampled'`` (the input mask resampled,
    > 0.5); ``denoise``: replaces the tiled Keras CNN (tests).
    """
    from qsmprep.numerics.dipole import dipole_kernel

    field = np.asarray(field, np.float64)
    if field.ndim != 3:
        raise ValueError(f'field must be 3-D; got shape {field.shape}')
    mask = (field != 0) if mask is None else (np.asarray(mask) > 0)
    if mask.shape != field.shape:
        raise ValueError(f'mask shape {mask.shape} != field shape {field.shape}')
    if not mask.any():
        raise ValueError('the mask is empty')
    vs = np.broadcast_to(np.asarray(voxel_size, np.float64), 3)
    shape = field.shape
    even = tuple(n + n % 2 for n in shape)
    pad = [(0, e - n) for e, n in zip(even, shape, strict=True)]
    f, m = np.pad(field * mask, pad), np.pad(mask, pad)
    resample = not np.allclose(vs, 1.0, atol=1e-3)
    vs_net = np.ones(3)
    if resample:
        f = fourier_resample(f, vs, 1.0, legacy_scaling=legacy_scaling)
        vs_net = np.asarray(even, np.float64) * vs / np.asarray(f.shape, np.float64)
        if network_mask not in ('ones', 'resampled'):
            raise ValueError(f"network_mask must be 'ones' or 'resampled'; got {network_mask!r}")
        m_net = (np.ones(f.shape, bool) if network_mask == 'ones' else
                 fourier_resample(m.astype(np.float64), vs, 1.0) > 0.5)
    else:
        m_net = m
    kernel = dipole_kernel(f.shape, vs_net, b0_direction, dtype=np.float32)
    denoise = denoise or _tiled(model.denoiser, max_voxels)
    x = unrolled_inference(f, m_net, kernel, denoise, step=model.step, mean=model.mean,
                           std=model.std)
    if resample:
        x = np.stack([fourier_resample(x[..., c], vs_net, vs, shape=even,
                                       legacy_scaling=legacy_scaling) for c in range(2)],
                     axis=-1)
    x = x[:shape[0], :shape[1], :shape[2]] * mask[..., None]
    return x.astype(np.float32)
