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

Importing :mod:`qsmprep.dl` itself imports nothing heavy.
"""

__all__: list[str] = []
