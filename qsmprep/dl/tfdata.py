"""``tf.data`` pipeline over the shards of :mod:`qsmprep.dl.data`.

The batch of global step ``s`` depends only on the dataset, the seed and ``s``
(:meth:`qsmprep.dl.data.ShardReader.batches`), so a resumed run streams exactly what an
uninterrupted run would have streamed from step ``s`` on.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from qsmprep.dl.data import ShardReader

__all__ = ['input_keys', 'make_dataset', 'to_model_inputs']


def input_keys(ndim: int) -> tuple[str, ...]:
    return ('field', 'mask', 'b0', 'voxel_size') if ndim == 3 else ('field', 'mask')


def to_model_inputs(batch: dict, *, ndim: int, label_channels: int | None = None):
    """Shard arrays → ``(inputs, label)`` as float32 arrays with channel axes."""
    inputs = {'field': batch['field'].astype(np.float32)[..., None],
              'mask': batch['mask'].astype(np.float32)[..., None]}
    if ndim == 3:
        inputs['b0'] = batch['b0'].astype(np.float32)
        inputs['voxel_size'] = batch['voxel_size'].astype(np.float32)
    label = batch['label'].astype(np.float32)
    if label_channels is not None:
        label = label[..., :label_channels]
    return inputs, label


def make_dataset(reader: ShardReader, *, batch_size: int, seed: int = 0, start_step: int = 0,
                 steps: int | None = None, steps_per_epoch: int | None = None,
                 shuffle: bool = True, label_channels: int | None = None,
                 prefetch: int = 2) -> tf.data.Dataset:
    """A ``tf.data.Dataset`` of ``(inputs, label)`` batches read from ``reader``.

    ``inputs`` is a dict (``field``, ``mask`` (B, *S, 1) and in 3D ``b0``, ``voxel_size``
    (B, 3)); ``label`` is (B, *S, C).  See :meth:`ShardReader.batches` for the order.
    """
    m = reader.manifest
    ndim = 3 if m['kind'] == 'patch3d' else 2
    spatial = tuple(m['geometry']['patch_shape'] if ndim == 3 else m['geometry']['crop'])
    channels = int(label_channels or m['channels'])

    def gen():
        for batch in reader.batches(batch_size=batch_size, seed=seed, start_step=start_step,
                                    steps=steps, steps_per_epoch=steps_per_epoch,
                                    shuffle=shuffle):
            yield to_model_inputs(batch, ndim=ndim, label_channels=channels)

    sig_in = {'field': tf.TensorSpec((None, *spatial, 1), tf.float32),
              'mask': tf.TensorSpec((None, *spatial, 1), tf.float32)}
    if ndim == 3:
        sig_in['b0'] = tf.TensorSpec((None, 3), tf.float32)
        sig_in['voxel_size'] = tf.TensorSpec((None, 3), tf.float32)
    sig = (sig_in, tf.TensorSpec((None, *spatial, channels), tf.float32))
    ds = tf.data.Dataset.from_generator(gen, output_signature=sig)
    return ds.prefetch(prefetch) if prefetch else ds
