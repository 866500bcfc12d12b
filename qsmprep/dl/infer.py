"""Load a trained model and predict χ maps from local fields (TensorFlow).

:func:`predict_volume` works on arrays; :func:`predict_file` on a local-field NIfTI (B0
direction from its ``B0_dir`` sidecar or its affine, mask from a file or ``field != 0``).
MoDL-QSM runs on overlapping 3D patches of its training size (``mode='patches'``, the
operator it was trained with) or on the whole masked region at once (``mode='whole'``);
Swin-UNet runs slice by slice (``mode='slices'``) on 2D tiles of its training crop.  Only
the bounding box of the mask (plus a margin) is processed.  The published MoDL-QSM weights
(the authors' Keras-2 ``last.h5``, supplied by the user) load through the same functions and
run through :mod:`qsmprep.dl.published` (whole volume, resampled to 1 mm).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from qsmprep.dl.windows import slicewise, sliding_window
from qsmprep.numerics.geometry import voxel_sizes

__all__ = ['load_model', 'predict_file', 'predict_volume']


def load_model(path, *, threads: int | None = None):
    """``(keras_model, metadata)`` from a model folder, its ``model.json`` or ``.keras`` file,
    or ``(PublishedModel, metadata)`` from the published MoDL-QSM weights (an ``.h5`` file of
    that layout, :mod:`qsmprep.dl.published`)."""
    from qsmprep.dl.train import configure_tensorflow

    configure_tensorflow(threads)
    published = _published_weights(path)
    if published is not None:
        from qsmprep.dl.published import load_published

        model = load_published(published)
        return model, model.meta()
    import keras

    import qsmprep.dl.layers  # registers the custom layers
    import qsmprep.dl.models  # noqa: F401

    path = Path(path)
    if path.is_dir():
        meta_path = path / 'model.json'
    elif path.suffix == '.json':
        meta_path, path = path, path.parent
    else:
        meta_path, path = path.with_name('model.json'), path.parent
    if not meta_path.is_file():
        raise FileNotFoundError(f'no model.json next to the model ({meta_path})')
    meta = json.loads(meta_path.read_text())
    model = keras.models.load_model(str(path / meta.get('model_file', 'model.keras')),
                                    compile=False)
    return model, meta


def _published_weights(path) -> Path | None:
    """``path`` when it is an ``.h5`` file to read as the published MoDL-QSM weights: one of
    that layout, or any ``.h5`` without a ``model.json`` next to it (then
    :func:`qsmprep.dl.published.read_weights` says what was expected)."""
    path = Path(path)
    if not (path.is_file() and path.suffix.lower() in ('.h5', '.hdf5')):
        return None
    from qsmprep.dl.published import is_published

    if is_published(path) or not path.with_name('model.json').is_file():
        return path
    return None


def _bbox(mask, margin, multiple, shape):
    idx = np.argwhere(mask)
    if idx.size == 0:
        raise ValueError('the mask is empty')
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + 1 + margin, shape)
    size = hi - lo
    size = -(-size // multiple) * multiple  # round up (may run past the volume: padded)
    return lo, lo + size


def predict_volume(model, meta: dict, field, mask=None, *, b0_direction=(0.0, 0.0, 1.0),
                   voxel_size=(1.0, 1.0, 1.0), mode: str | None = None, patch_shape=None,
                   overlap=None, trim=None, batch_size: int | None = None,
                   axis: int | None = None, margin: int = 4, channel: int = 0):
    """χ (ppm, float32, zero outside the mask) of a local field (ppm) with a trained model.

    Parameters
    ----------
    model, meta
        From :func:`load_model`.
    field : (X, Y, Z) array
        Local field in ppm.
    mask : (X, Y, Z) array, optional
        Default ``field != 0``.
    b0_direction, voxel_size
        B0 unit vector in the voxel frame, voxel size in mm (3D models).
    mode : {'patches', 'whole', 'slices'}, optional
        Default from ``meta['inference']``.
    patch_shape, overlap, trim, batch_size, axis
        Override the defaults of ``meta['inference']`` (``trim``: blending,
        :func:`qsmprep.dl.windows.sliding_window`).
    margin : int
        Voxels kept around the mask's bounding box.
    channel : int
        Output channel returned (0: χ; 1: MoDL-QSM's complementary field).
    """
    if meta.get('kind') == 'modlqsm-published':
        if mode not in (None, 'whole'):
            raise ValueError(f"the published MoDL-QSM runs on the whole volume only; got "
                             f"mode={mode!r}")
        from qsmprep.dl.published import predict_published

        return predict_published(model, field, mask, voxel_size=voxel_size,
                                 b0_direction=b0_direction)[..., channel]
    import tensorflow as tf

    field = np.asarray(field, np.float32)
    if field.ndim != 3:
        raise ValueError(f'field must be 3-D; got shape {field.shape}')
    mask = (field != 0) if mask is None else (np.asarray(mask) > 0)
    if mask.shape != field.shape:
        raise ValueError(f'mask shape {mask.shape} != field shape {field.shape}')
    inf = meta.get('inference', {})
    mode = mode or inf.get('mode', 'patches')
    mult = int(inf.get('size_multiple', 1)) if mode == 'whole' else 1
    lo, hi = _bbox(mask, margin, mult, np.array(field.shape))
    pad = [(0, max(0, int(h) - n)) for h, n in zip(hi, field.shape, strict=True)]
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    f = np.pad(field * mask, pad)[sl]
    m = np.pad(mask, pad)[sl].astype(np.float32)
    keys = meta.get('inputs') or ['field', 'mask']
    consts = {}
    if 'b0' in keys:
        b = np.asarray(b0_direction, np.float32)
        consts['b0'] = b / np.linalg.norm(b)
    if 'voxel_size' in keys:
        consts['voxel_size'] = np.asarray(voxel_size, np.float32)

    fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def predict(batch):
        x = {k: tf.convert_to_tensor(v.astype(np.float32)) for k, v in batch.items()
             if k in keys}
        return fn(x).numpy()

    vols = {'field': f[..., None], 'mask': m[..., None]}
    if mode == 'whole':
        batch = {k: v[None] for k, v in vols.items()}
        batch.update({k: v[None] for k, v in consts.items()})
        out = predict(batch)[0]
    elif mode == 'patches':
        patch = patch_shape or inf.get('patch_shape', [48, 48, 48])
        ov = overlap or inf.get('overlap', [p // 4 for p in patch])
        out = sliding_window(predict, vols, patch_shape=patch, overlap=ov,
                             trim=inf.get('trim', 0) if trim is None else trim,
                             batch_size=int(batch_size or inf.get('batch_size', 1)),
                             constants=consts)
    elif mode == 'slices':
        crop = patch_shape or inf.get('crop', [128, 128])
        ov = overlap or inf.get('overlap', [c // 4 for c in crop])
        out = slicewise(predict, vols, axis=int(axis if axis is not None else
                                                inf.get('axis', 2)),
                        crop=crop, overlap=ov, trim=inf.get('trim', 0) if trim is None else trim,
                        batch_size=int(batch_size or inf.get('batch_size', 8)))
    else:
        raise ValueError(f"mode must be 'patches', 'whole' or 'slices'; got {mode!r}")
    chi = np.zeros(np.array(field.shape) + [p[1] for p in pad], np.float32)
    chi[sl] = out[..., channel]
    chi = chi[:field.shape[0], :field.shape[1], :field.shape[2]]
    return chi * mask


def predict_file(model_path, field_file, out_file, *, mask_file=None, b0_direction=None,
                 mode: str | None = None, threads: int | None = None, model=None,
                 **kwargs) -> str:
    """Predict χ from a local-field NIfTI and write it (with a JSON sidecar) to ``out_file``."""
    import nibabel as nb

    from qsmprep.dl.data import _b0_from

    if model is None:
        model, meta = load_model(model_path, threads=threads)
    else:
        model, meta = model
    img = nb.load(str(field_file))
    field = np.asarray(img.dataobj, np.float32)
    mask = None if mask_file is None else np.asarray(nb.load(str(mask_file)).dataobj) > 0
    if b0_direction is None:
        side = Path(str(field_file).replace('.nii.gz', '.json').replace('.nii', '.json'))
        b0_direction = _b0_from(side, img.affine)
    vs = voxel_sizes(img.affine)
    chi = predict_volume(model, meta, field, mask, b0_direction=b0_direction, voxel_size=vs,
                         mode=mode, **kwargs)
    out = nb.Nifti1Image(chi.astype(np.float32), img.affine)
    out.set_sform(img.affine, code=1)
    out.set_qform(img.affine, code=1)
    out.header.set_xyzt_units('mm', 'sec')
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out.to_filename(str(out_file))
    side = {'Units': 'ppm', 'B0_dir': [float(v) for v in b0_direction],
            'EstimationAlgorithm': meta.get('description') or (
                f"{meta.get('kind')} ({meta.get('name')}), "
                f"{mode or meta.get('inference', {}).get('mode')} inference"),
            'ModelVersions': meta.get('versions'),
            'Sources': [str(Path(field_file).absolute())]}
    stem = out_file.name.split('.')[0]
    (out_file.parent / f'{stem}.json').write_text(json.dumps(side, indent=2) + '\n')
    return str(out_file)
