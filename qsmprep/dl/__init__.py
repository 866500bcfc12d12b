"""Deep learning for qsmprep: training data, MoDL-QSM (3D) and Swin-UNet (2D), training and
inference.

Layering
--------
Only the modules that need it import TensorFlow/Keras, and only when they are imported
themselves:

=====================  =====================================================================
module                 contents
=====================  =====================================================================
``data``               datasets from derivatives: pairs, 3D patches, 2D slices, shards +
                       manifest, deterministic batch order (NumPy/nibabel only)
``windows``            sliding-window inference with overlap blending (NumPy only)
``config``             :class:`~qsmprep.dl.config.TrainConfig` (no TensorFlow)
``ops``                dipole kernel and MoDL data-consistency operators (TensorFlow)
``layers``, ``models`` Keras 3 layers and the MoDL-QSM / Swin-UNet / stand-in models
``losses``             masked L1, SSIM, NRMSE, HFEN (TensorFlow)
``tfdata``             the ``tf.data`` loader over the shards
``train``              the resumable training loop
``infer``              loading a trained model and predicting χ maps
=====================  =====================================================================

Importing :mod:`qsmprep.dl` itself imports nothing heavy; :func:`require_tensorflow` checks
that TensorFlow can be imported, without importing it.
"""

from __future__ import annotations

import importlib.util

from qsmprep.io.errors import QsmprepError

__all__ = ['INSTALL_HINT', 'TensorFlowMissingError', 'require_tensorflow']

#: How to get the optional deep-learning dependencies.
INSTALL_HINT = "pip install 'qsmprep[dl]'"


class TensorFlowMissingError(QsmprepError):
    """TensorFlow/Keras are not installed (exit 69, ``EX_UNAVAILABLE``)."""

    exit_code = 69


def require_tensorflow(what: str = 'the deep-learning level') -> None:
    """Raise :class:`TensorFlowMissingError` with the install hint when TensorFlow or Keras
    cannot be found (checked with :func:`importlib.util.find_spec`, nothing is imported).

    >>> require_tensorflow() if importlib.util.find_spec('tensorflow') else None
    """
    missing = [m for m in ('tensorflow', 'keras') if importlib.util.find_spec(m) is None]
    if missing:
        raise TensorFlowMissingError(f'{what} needs {" and ".join(missing)}, which is not '
                                     'installed', hint=INSTALL_HINT)
