"""Deep-learning inference node: a χ map from a local field with a trained model.

TensorFlow is imported only inside :meth:`PredictChimap._run_interface` (never when the
workflow is built, so forked Nipype workers start without it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

__all__ = ['PredictChimap', 'model_description']


def model_description(model) -> tuple[str, str]:
    """``(desc, text)`` of a trained model folder from its ``model.json`` (no TensorFlow):
    ``desc`` is the BIDS ``desc-`` label of its χ maps (e.g. ``modl``), ``text`` the
    ``EstimationAlgorithm`` sidecar value.  The published MoDL-QSM weights (an ``.h5`` file,
    :mod:`qsmprep.dl.published`) give ``modlqsmpublished`` and a text with the file's
    SHA-256; an ``.h5`` file of any other layout raises
    :class:`~qsmprep.io.errors.UsageError` naming the file and the expected layout."""
    path = Path(model)
    if path.is_file() and path.suffix.lower() in ('.h5', '.hdf5'):
        from qsmprep.dl import published

        if published.is_published(path) or not path.with_name('model.json').is_file():
            return published.DESC, published.description(path)
    meta_path = path / 'model.json' if path.is_dir() else path.with_name('model.json')
    meta = json.loads(meta_path.read_text())
    desc = ''.join(c for c in str(meta.get('name', meta.get('kind', 'dl'))) if c.isalnum())
    tr = meta.get('training', {})
    text = (f"{meta.get('kind')} deep-learning model ({path.absolute()}), trained "
            f"{tr.get('steps')} steps with qsmprep {meta.get('versions', {}).get('qsmprep')}")
    return desc or 'dl', text


class _PredictInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='local field (ppm)')
    in_mask = File(exists=True, mandatory=True, desc='mask of the local field')
    model = traits.Str(mandatory=True, desc='trained model folder (model.keras + model.json) '
                       'or the published MoDL-QSM weights (.h5)')
    b0_direction = traits.List(traits.Float, minlen=3, maxlen=3, mandatory=True,
                               desc='B0 unit vector in the voxel frame of in_file')
    mode = traits.Enum(None, 'patches', 'whole', 'slices', usedefault=True,
                       desc="inference mode (None: the model's default)")
    num_threads = traits.Int(1, usedefault=True, nohash=True,
                             desc='TensorFlow intra-op threads')
    use_gpu = traits.Bool(False, usedefault=True, nohash=True,
                          desc='run on a GPU when one is visible (else CPU only)')


class _PredictOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='χ map (ppm), zero outside the mask')


class PredictChimap(SimpleInterface):
    """χ from a local field with a trained model (:func:`qsmprep.dl.infer.predict_volume`)."""

    input_spec = _PredictInputSpec
    output_spec = _PredictOutputSpec

    def _run_interface(self, runtime):
        if not self.inputs.use_gpu:
            os.environ['CUDA_VISIBLE_DEVICES'] = '-1'  # set before TensorFlow starts
        from qsmprep.dl.infer import load_model, predict_volume
        from qsmprep.numerics.geometry import voxel_sizes
        from qsmprep.utils.images import load, save

        model, meta = load_model(self.inputs.model, threads=self.inputs.num_threads)
        field, affine, _ = load(self.inputs.in_file)
        mask = load(self.inputs.in_mask)[0] > 0
        chi = predict_volume(model, meta, field, mask, b0_direction=self.inputs.b0_direction,
                             voxel_size=voxel_sizes(affine), mode=self.inputs.mode)
        self._results['out_file'] = save(chi, affine, os.path.abspath('chi_dl.nii.gz'))
        return runtime
