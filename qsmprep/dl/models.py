"""Model builders: MoDL-QSM (3D), Swin-UNet (2D) and a fully convolutional stand-in.

Every model maps physical units to physical units: inputs are the local field in ppm and the
mask (plus, in 3D, the B0 direction in the voxel frame and the voxel size in mm), the output
is χ in ppm (MoDL-QSM with 2 channels: ``[χ_app, f]``, the second channel being the field
not explained by χ_app).  The dataset's normalisation statistics are stored inside the
models (:class:`~qsmprep.dl.layers.ChannelNorm`), so inference needs no side information.

MoDL-QSM (Feng et al. 2021) as built here
-----------------------------------------
``x⁰ = 0``; for ``k = 1 … K``: ``z = x^{k−1} + t·Aᴴ M (y − A x^{k−1})`` (one learned ``t``,
:class:`~qsmprep.dl.layers.GradientStep`), ``x^k = denorm(G(norm(z)))·M`` with **one** CNN
``G`` shared by all iterations; output ``x^K``.  Deviations from the original, all
documented in ``docs/learning.md``:

* the data term is weighted by the mask (the field is only known there);
* the dipole kernel is built per sample from its own B0 direction and voxel size, on a grid
  padded by a fixed margin (:mod:`qsmprep.dl.ops`), not on the fixed 210×224×160 matrix;
* ``G`` has a global residual connection (in normalised units) and two variants:
  ``denoiser='resnet'`` is the original (3³ convolutions, ``blocks`` residual blocks, width
  32 and 8 blocks in the paper) and ``denoiser='unet'`` (default) a small 3D U-Net with
  ``levels`` down-samplings: about 8× fewer operations per voxel and a larger receptive
  field, which is what makes CPU training and 1 mm inference affordable;
* dropout is off by default (``dropout=0.5`` restores the original).
"""

from __future__ import annotations

import keras

from qsmprep.dl.config import MODEL_KINDS, label_normalization
from qsmprep.dl.layers import (
    ChannelNorm,
    DipoleKernel,
    FastConv3D,
    GradientStep,
    PatchEmbed,
    PatchExpand,
    PatchMerging,
    SwinBlock,
    ZerosChannels,
)

__all__ = ['MODEL_KINDS', 'ZerosChannels', 'build_fcn', 'build_model', 'build_modl',
           'build_swin_unet', 'model_inputs']


def model_inputs(ndim: int = 3, shape=None) -> dict:
    """Keras inputs ``field``, ``mask`` (and in 3D ``b0``, ``voxel_size``)."""
    spatial = tuple(shape) if shape is not None else (None,) * ndim
    inputs = {'field': keras.Input((*spatial, 1), name='field'),
              'mask': keras.Input((*spatial, 1), name='mask')}
    if ndim == 3:
        inputs['b0'] = keras.Input((3,), name='b0')
        inputs['voxel_size'] = keras.Input((3,), name='voxel_size')
    return inputs


def _conv(ndim, filters, size, **kw):
    layer = FastConv3D if ndim == 3 else keras.layers.Conv2D
    return layer(filters, size, padding='same', kernel_initializer='he_uniform', **kw)


def _conv_bn_relu(x, filters, *, batchnorm, ndim=3):
    x = _conv(ndim, filters, 3, use_bias=not batchnorm)(x)
    if batchnorm:
        x = keras.layers.BatchNormalization()(x)
    return keras.layers.ReLU()(x)


def _resnet_denoiser(channels, *, width=32, blocks=8, batchnorm=True, dropout=0.0,
                     residual=True, name='denoiser'):
    """The original MoDL-QSM CNN (Conv → ``blocks`` residual blocks → 1³ head)."""
    inp = keras.Input((None, None, None, channels))
    x = keras.layers.ReLU()(_conv(3, width, 3, use_bias=False)(inp))
    for _ in range(blocks):
        y = _conv_bn_relu(x, width, batchnorm=batchnorm)
        if dropout:
            y = keras.layers.Dropout(dropout)(y)
        y = _conv(3, width, 3, use_bias=not batchnorm)(y)
        if batchnorm:
            y = keras.layers.BatchNormalization()(y)
        x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    x = _conv(3, width, 1, activation='relu')(x)
    x = _conv(3, width, 1, activation='relu')(x)
    out = _conv(3, channels, 1, dtype='float32')(x)
    if residual:
        out = keras.layers.Add(dtype='float32')([inp, out])
    return keras.Model(inp, out, name=name)


def _unet_denoiser(channels, *, width=16, levels=2, batchnorm=True, dropout=0.0,
                   residual=True, ndim=3, name='denoiser'):
    """Small U-Net: two 3ⁿ convolutions per level, strided down-sampling, transposed-conv
    up-sampling with skip concatenation, linear 1ⁿ head."""
    inp = keras.Input((*(None,) * ndim, channels))
    down = keras.layers.Conv3D if ndim == 3 else keras.layers.Conv2D
    up = keras.layers.Conv3DTranspose if ndim == 3 else keras.layers.Conv2DTranspose
    x, skips = inp, []
    for level in range(levels + 1):
        w = width * 2 ** level
        x = _conv_bn_relu(x, w, batchnorm=batchnorm, ndim=ndim)
        if dropout and level == levels:
            x = keras.layers.Dropout(dropout)(x)
        x = _conv_bn_relu(x, w, batchnorm=batchnorm, ndim=ndim)
        if level < levels:
            skips.append(x)
            x = down(w * 2, 2, strides=2, kernel_initializer='he_uniform')(x)
    for level in reversed(range(levels)):
        w = width * 2 ** level
        x = up(w, 2, strides=2, kernel_initializer='he_uniform')(x)
        x = keras.layers.Concatenate()([x, skips[level]])
        x = _conv_bn_relu(x, w, batchnorm=batchnorm, ndim=ndim)
        x = _conv_bn_relu(x, w, batchnorm=batchnorm, ndim=ndim)
    out = _conv(ndim, channels, 1, dtype='float32')(x)
    if residual:
        out = keras.layers.Add(dtype='float32')([inp, out])
    return keras.Model(inp, out, name=name)


def build_modl(*, channels: int = 2, iterations: int = 3, denoiser: str = 'unet',
               width: int = 16, blocks: int = 8, levels: int = 2, batchnorm: bool = True,
               dropout: float = 0.0, residual: bool = True, margin: int = 24,
               multiple: int = 8, step_init: float = 1.0, label_mean=None, label_std=None,
               name: str = 'modl_qsm') -> keras.Model:
    """MoDL-QSM: ``iterations`` unrolled proximal-gradient steps with one shared CNN.

    Parameters
    ----------
    channels : {1, 2}
        Unknowns: χ_app only, or ``[χ_app, f]`` as in the original (``A x = D⊗x₀ + x₁``).
    iterations : int
        Unrolled iterations ``K`` (3 in the paper).
    denoiser : {'unet', 'resnet'}
        ``'resnet'``: the paper's CNN (``width`` 32, ``blocks`` 8 reproduce it).
    margin, multiple
        FFT padding (:func:`qsmprep.dl.ops.padded_grid`).
    step_init : float
        Initial step ``t`` (the paper used 4.0; 1.0 keeps ``t·‖AᴴA‖ < 2`` from the start).
    label_mean, label_std : sequences of ``channels`` floats
        Normalisation of the iterates (training-label statistics, ppm).

    Returns
    -------
    keras.Model
        Inputs ``{'field', 'mask', 'b0', 'voxel_size'}``, output ``(B, X, Y, Z, channels)``
        in ppm, zero outside the mask.  Spatial sizes must be multiples of ``2**levels``
        for the U-Net denoiser.
    """
    if channels not in (1, 2):
        raise ValueError(f'channels must be 1 or 2; got {channels!r}')
    mean = list(label_mean) if label_mean is not None else [0.0] * channels
    std = list(label_std) if label_std is not None else [1.0] * channels
    if len(mean) != channels or len(std) != channels:
        raise ValueError('label_mean/label_std need one value per channel')
    if denoiser == 'unet':
        G = _unet_denoiser(channels, width=width, levels=levels, batchnorm=batchnorm,
                           dropout=dropout, residual=residual)
    elif denoiser == 'resnet':
        G = _resnet_denoiser(channels, width=width, blocks=blocks, batchnorm=batchnorm,
                             dropout=dropout, residual=residual)
    else:
        raise ValueError(f"denoiser must be 'unet' or 'resnet'; got {denoiser!r}")
    inp = model_inputs(3)
    field, mask = inp['field'], inp['mask']
    kernel = DipoleKernel(margin, multiple, name='dipole_kernel')(
        [field, inp['b0'], inp['voxel_size']])
    step = GradientStep(channels, margin, multiple, step_init, name='gradient_step')
    norm = ChannelNorm(mean, std, name='normalize')
    denorm = ChannelNorm(mean, std, inverse=True, name='denormalize', dtype='float32')
    x = ZerosChannels(channels, name='x0')(field)
    for _ in range(int(iterations)):
        z = step([x, field, mask, kernel])
        x = denorm([G(norm([z, mask])), mask])
    return keras.Model(inp, x, name=name)


def build_fcn(*, ndim: int = 3, width: int = 8, depth: int = 3, field_std: float = 1.0,
              label_mean: float = 0.0, label_std: float = 1.0,
              name: str = 'fcn') -> keras.Model:
    """Fully convolutional stand-in (``depth`` 3ⁿ convolutions + 1ⁿ head; receptive field
    radius ``depth``).  Used to test the inference machinery and as a trivial baseline."""
    inp = model_inputs(ndim)
    x = ChannelNorm([0.0], [field_std], name='normalize')([inp['field'], inp['mask']])
    for _ in range(depth):
        x = _conv(ndim, width, 3, activation='relu')(x)
    x = _conv(ndim, 1, 1, dtype='float32')(x)
    out = ChannelNorm([label_mean], [label_std], inverse=True, name='denormalize',
                      dtype='float32')([x, inp['mask']])
    return keras.Model(inp, out, name=name)


def build_swin_unet(*, crop=(128, 128), embed_dim: int = 32, depths=(2, 2, 2, 2),
                    heads=(2, 4, 8, 8), window: int = 8, patch: int = 2,
                    mlp_ratio: float = 2.0, conv_branch: bool = True, field_std: float = 1.0,
                    label_mean: float = 0.0, label_std: float = 1.0,
                    name: str = 'swin_unet') -> keras.Model:
    """Swin-UNet (2D): 4-stage shifted-window encoder, 3-stage decoder with skips, 1×1 head.

    Encoder stage ``i`` (``i = 0 … 3``) runs ``depths[i]`` :class:`SwinBlock` s (window
    ``window``, every second block shifted, parallel convolution branch) at resolution
    ``crop / (patch·2^i)`` with ``embed_dim·2^i`` channels; :class:`PatchMerging` between
    stages.  The decoder mirrors stages 2, 1, 0 (:class:`PatchExpand`, skip concatenation,
    linear fusion, Swin blocks); a final ``patch``× expansion, concatenated with the
    normalised input, feeds a 3×3 convolution and the 1×1 head.

    Fixes of the thesis' collapse to near-zero output (see ``docs/learning.md``):
    inputs divided by the training field std and labels standardised (``ChannelNorm``), the
    loss only on masked voxels (in :mod:`qsmprep.dl.losses`), down-sampling ``patch = 2``
    (not 4: the bottleneck is 8×8 at a 128² crop, not 4×4), the mask as a second input
    channel and a full-resolution skip from the input to the head.
    """
    crop = tuple(int(c) for c in crop)
    total = patch * 2 ** (len(depths) - 1)
    if len(depths) != 4 or len(heads) != 4:
        raise ValueError('depths and heads need 4 values (4 encoder stages)')
    if any(c % (total * min(window, c // total)) for c in crop):
        raise ValueError(f'crop {crop} must be a multiple of patch·8·window-compatible size '
                         f'(patch {patch}, window {window})')
    inp = model_inputs(2, crop)
    field, mask = inp['field'], inp['mask']
    x_in = ChannelNorm([0.0], [field_std], name='normalize')([field, mask])
    x_in = keras.layers.Concatenate(name='with_mask')([x_in, mask])
    x = PatchEmbed(embed_dim, patch, name='patch_embed')(x_in)
    skips = []
    for i in range(4):
        dim = embed_dim * 2 ** i
        for j in range(depths[i]):
            x = SwinBlock(dim, heads[i], window, shift=bool(j % 2), mlp_ratio=mlp_ratio,
                          conv_branch=conv_branch, name=f'enc{i}_block{j}')(x)
        if i < 3:
            skips.append(x)
            x = PatchMerging(name=f'merge{i}')(x)
    for i in reversed(range(3)):
        dim = embed_dim * 2 ** i
        x = PatchExpand(2, name=f'expand{i}')(x)
        x = keras.layers.Concatenate(name=f'skip{i}')([x, skips[i]])
        x = keras.layers.Dense(dim, name=f'fuse{i}')(x)
        for j in range(depths[i]):
            x = SwinBlock(dim, heads[i], window, shift=bool(j % 2), mlp_ratio=mlp_ratio,
                          conv_branch=conv_branch, name=f'dec{i}_block{j}')(x)
    x = PatchExpand(patch, out_dim=embed_dim, name='final_expand')(x)
    x = keras.layers.Concatenate(name='input_skip')([x, x_in])
    x = keras.layers.Conv2D(embed_dim, 3, padding='same', activation='gelu', name='refine')(x)
    x = keras.layers.Conv2D(1, 1, name='head', dtype='float32')(x)
    out = ChannelNorm([label_mean], [label_std], inverse=True, name='denormalize',
                      dtype='float32')([x, mask])
    return keras.Model(inp, out, name=name)


def build_model(kind: str, manifest: dict | None = None, **hparams) -> keras.Model:
    """Build ``kind`` ∈ {'modl', 'swin', 'fcn'} with the normalisation of ``manifest``."""
    norm = (manifest or {}).get('normalization', {})
    lab = norm.get('label', {})
    fstd = float(norm.get('field', {}).get('std', [1.0])[0])
    if kind == 'modl':
        ch = int((manifest or {}).get('channels', hparams.pop('channels', 2)))
        hparams.pop('channels', None)
        mean, std = label_normalization(manifest or {}, ch)
        return build_modl(channels=ch, label_mean=mean, label_std=std, **hparams)
    lmean = float(lab.get('mean', [0.0])[0])
    lstd = float(lab.get('std', [1.0])[0])
    if kind == 'swin':
        crop = (manifest or {}).get('geometry', {}).get('crop', hparams.pop('crop', (128, 128)))
        hparams.pop('crop', None)
        return build_swin_unet(crop=crop, field_std=fstd, label_mean=lmean, label_std=lstd,
                               **hparams)
    if kind == 'fcn':
        ndim = 3 if (manifest or {}).get('kind', 'patch3d') == 'patch3d' else 2
        hparams.setdefault('ndim', ndim)
        return build_fcn(field_std=fstd, label_mean=lmean, label_std=lstd, **hparams)
    raise ValueError(f'model kind must be one of {MODEL_KINDS}; got {kind!r}')
