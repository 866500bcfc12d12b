"""Dataset invariants (NumPy only, no TensorFlow)."""

import json

import nibabel as nb
import numpy as np
import pytest

from qsmprep.dl.data import (
    ShardReader,
    build_dataset,
    crop_slice,
    epoch_order,
    find_pairs,
    load_pair,
    patch_origins,
    read_manifest,
    select_patches,
    select_slices,
    split_subjects,
)


def _shard_arrays(root, split):
    r = ShardReader(root, split)
    return r.get(np.arange(len(r)), keys=('field', 'mask', 'label', 'b0', 'source', 'origin',
                                          'flip'))


def test_find_pairs_reads_b0_and_geometry(derivatives):
    pairs = find_pairs(derivatives)
    assert len(pairs) == 6
    assert {p.subject for p in pairs} == {'01', '02', '03'}
    p = pairs[1]
    assert p.orientation == 'ori02' and p.voxel_size == (2.0, 2.0, 2.0)
    side = json.loads(open(p.field.replace('.nii.gz', '.json')).read())
    assert np.allclose(p.b0_direction, side['B0_dir'])
    assert find_pairs(derivatives, subjects=['sub-02'])[0].subject == '02'
    with pytest.raises(ValueError, match='source'):
        find_pairs(derivatives, source='nope')


def test_simulate_truth_naming(tmp_path, write_derivatives):
    root = write_derivatives(tmp_path / 'sim', subjects=1, orientations=2,
                             source='simulate-truth')
    assert find_pairs(root) == []  # no V-SHARP masks: not qsmprep derivatives
    pairs = find_pairs(root, source='simulate-truth')
    assert len(pairs) == 2 and pairs[0].mask.endswith('_desc-brain_mask.nii.gz')


def test_load_pair_second_channel_is_unexplained_field(derivatives):
    pair = find_pairs(derivatives)[0]
    field, mask, label = load_pair(pair, channels=2)
    assert label.shape == (*field.shape, 2)
    # the synthetic field is exactly D⊗χ (up to padding), so the complementary field is small
    ratio = np.linalg.norm(label[..., 1][mask]) / np.linalg.norm(field[mask])
    assert ratio < 0.1
    assert np.all(label[~mask] == 0) and np.all(field[~mask] == 0)


def test_split_never_shares_subjects():
    subs = [f'{i:02d}' for i in range(10)]
    for seed in range(5):
        train, val = split_subjects(subs, validation_fraction=0.3, seed=seed)
        assert not set(train) & set(val) and sorted(train + val) == subs and len(val) == 3
    assert split_subjects(subs, seed=1) == split_subjects(subs, seed=1)
    assert split_subjects(subs, validation_subjects=['sub-04'])[1] == ['04']
    with pytest.raises(ValueError, match='not in the data'):
        split_subjects(subs, validation_subjects=['99'])


def test_patch_origins_cover_volume():
    shape, patch = (20, 9, 16), (8, 8, 8)
    cover = np.zeros(shape, int)
    for o in patch_origins(shape, patch, (5, 5, 5)):
        cover[o[0]:o[0] + 8, o[1]:o[1] + 8, o[2]:o[2] + 8] += 1
    assert cover.min() >= 1


def test_3d_dataset_invariants(dataset3d, derivatives):
    m = read_manifest(dataset3d)
    assert m['kind'] == 'patch3d' and m['channels'] == 2
    assert set(m['split']['train']).isdisjoint(m['split']['validation'])
    subj = [s['subject'] for s in m['sources']]
    for split in ('train', 'validation'):
        a = _shard_arrays(dataset3d, split)
        subjects = {subj[i] for i in a['source']}
        assert subjects <= set(m['split'][split])  # no subject leakage
        assert a['field'].shape[1:] == (16, 16, 16)
        inside = a['mask'].reshape(len(a['mask']), -1).mean(1)
        assert inside.min() >= 0.3  # the in-mask filter
        assert m['counts'][split] == len(a['field'])
    # the filter keeps exactly the patches at or above the threshold
    mask = load_pair(find_pairs(derivatives)[0])[1]
    kept = set(select_patches(mask, patch_shape=(16,) * 3, stride=(4,) * 3, min_inside=0.5))
    allp = patch_origins(mask.shape, (16,) * 3, (4,) * 3)
    frac = {o: mask[o[0]:o[0] + 16, o[1]:o[1] + 16, o[2]:o[2] + 16].mean() for o in allp}
    assert kept == {o for o in allp if frac[o] >= 0.5} and 0 < len(kept) < len(allp)
    # normalisation statistics come from the training subjects only
    fields = [load_pair(p)[0:2] for p in find_pairs(derivatives)
              if p.subject in m['split']['train']]
    vals = np.concatenate([f[mk] for f, mk in fields])
    assert np.isclose(m['normalization']['field']['std'][0], vals.std(), rtol=1e-4)


def test_same_seed_same_dataset(tmp_path, derivatives):
    kw = {'root': derivatives, 'kind': 'slice2d', 'crop': 32, 'min_gap': 2}
    a = build_dataset(tmp_path / 'a', seed=3, **kw)
    b = build_dataset(tmp_path / 'b', seed=3, **kw)
    build_dataset(tmp_path / 'c', seed=4, **kw)
    assert a == b
    for s in a['shards']:
        assert (tmp_path / 'a' / s['file']).read_bytes() == \
            (tmp_path / 'b' / s['file']).read_bytes()
    ra, rc = _shard_arrays(tmp_path / 'a', 'train'), _shard_arrays(tmp_path / 'c', 'train')
    assert ra['origin'].shape != rc['origin'].shape or not np.array_equal(ra['origin'],
                                                                         rc['origin'])
    with pytest.raises(FileExistsError):
        build_dataset(tmp_path / 'a', seed=3, **kw)


def test_2d_slices_follow_the_rules(dataset2d, derivatives):
    m = read_manifest(dataset2d)
    pairs = find_pairs(derivatives)
    vols = {i: load_pair(p) for i, p in enumerate(pairs)}
    for split in ('train', 'validation'):
        a = _shard_arrays(dataset2d, split)
        picks = {}
        for k in range(len(a['field'])):
            src = int(a['source'][k])
            axis, idx, row, col = (int(v) for v in a['origin'][k])
            picks.setdefault((src, axis), []).append(idx)
            field, mask, _label = vols[src]
            f = crop_slice(field, axis, idx, row, col, (32, 32))
            mk = crop_slice(mask, axis, idx, row, col, (32, 32))
            flip = int(a['flip'][k])
            if flip:
                f, mk = np.flip(f, 1 if flip == 1 else 0), np.flip(mk, 1 if flip == 1 else 0)
            assert np.array_equal(a['field'][k], f) and np.array_equal(a['mask'][k] > 0, mk)
            # at most max_outside of the in-image voxels outside the mask
            assert 1 - mk.sum() / np.prod([min(n, 32) for n in (24, 24)]) <= 0.75 + 1e-9
        for idxs in picks.values():
            d = np.diff(sorted(idxs))
            assert d.size == 0 or d.min() > 2  # min_gap = 2 slices between picks
        assert {s['subject'] for s in np.asarray(m['sources'])[a['source']]} \
            <= set(m['split'][split])


def test_select_slices_rejects_mostly_outside():
    mask = np.zeros((40, 40, 40), bool)
    mask[5:35, 5:35, 18:22] = True  # thin slab: z-slices are full, x/y slices mostly empty
    picks = select_slices(mask, rng=np.random.default_rng(0), crop=(32, 32), max_outside=0.75,
                          min_gap=0)
    axes = [p[0] for p in picks]
    assert axes.count(2) == 4 and axes.count(0) == 0 and axes.count(1) == 0


def test_flip_rate_is_about_forty_percent(tmp_path, write_derivatives):
    root = tmp_path / 'qsmprep'
    write_derivatives(root, subjects=2, orientations=2, shape=(48, 48, 48))
    build_dataset(tmp_path / 'ds', root=root, kind='slice2d', crop=32, min_gap=0,
                  max_outside=1.0, channels=1, validation_fraction=0.0, seed=1)
    flips = _shard_arrays(tmp_path / 'ds', 'train')['flip']
    assert flips.size == 4 * 3 * 48
    rate = np.mean(flips > 0)
    assert abs(rate - 0.4) < 0.06  # 576 draws: 3.5 standard errors
    assert abs(np.mean(flips == 1) - np.mean(flips == 2)) < 0.08


def test_batch_order_is_a_function_of_seed_and_step(dataset3d):
    r = ShardReader(dataset3d, 'train', cache=1)
    full = [b['field'] for b in r.batches(batch_size=3, seed=5, steps=7, steps_per_epoch=3)]
    tail = [b['field'] for b in r.batches(batch_size=3, seed=5, start_step=4, steps=3,
                                          steps_per_epoch=3)]
    for x, y in zip(full[4:], tail, strict=True):
        assert np.array_equal(x, y)
    order = epoch_order(r.sizes, 0, 5)
    assert sorted(order.tolist()) == list(range(len(r)))
    assert not np.array_equal(order, epoch_order(r.sizes, 1, 5))
    val = list(ShardReader(dataset3d, 'validation').batches(batch_size=4, shuffle=False))
    assert sum(len(b['field']) for b in val) == len(ShardReader(dataset3d, 'validation'))


def test_nifti_geometry_kept(derivatives):
    p = find_pairs(derivatives)[0]
    assert nb.load(p.field).shape == p.shape
