"""DataLad / git-annex / OpenNeuro datasets: every file a symbolic link into a store.

A participant run on such a dataset must give exactly what it gives on the same dataset
with regular files, and its ``Sources`` must name the dataset paths, not the store.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from qsmprep.cli.run import main
from qsmprep.workflows.base import _raw_uri


def _annexify(bids: Path, store: Path) -> int:
    """Move every NIfTI/JSON under ``sub-*`` into ``store`` and leave a relative link."""
    store.mkdir()
    n = 0
    for path in sorted(bids.glob('sub-*/**/*')):
        if path.is_file() and path.name.endswith(('.nii.gz', '.json')):
            key = store / f'MD5E-s{path.stat().st_size}--{n:04d}{"".join(path.suffixes)}'
            path.rename(key)
            path.symlink_to(os.path.relpath(key, path.parent))
            n += 1
    return n


def _outputs(out: Path) -> dict[str, Path]:
    """Derivatives (NIfTI, sidecars, transforms) by relative path; logs (named by run) left out."""
    files = {}
    for p in out.rglob('*'):
        rel = p.relative_to(out)
        if (p.is_file() and p.name.endswith(('.nii.gz', '.json', '_xfm.txt'))
                and not {'log', 'logs'} & set(rel.parts)):
            files[rel.as_posix()] = p
    return files


@pytest.mark.slow
def test_symlinked_dataset_runs_like_regular_files(tmp_path, monkeypatch):
    from qsmprep.simulate import simulate_dataset

    monkeypatch.chdir(tmp_path)
    plain = tmp_path / 'plain'
    simulate_dataset(plain, preset='tiny', seed=0, jobs=1, orientations=2, truth=False)
    shutil.rmtree(plain / 'derivatives', ignore_errors=True)
    annex = tmp_path / 'annex'
    shutil.copytree(plain, annex)
    n_links = _annexify(annex, tmp_path / 'store')  # the store lies outside bids_dir
    assert n_links == 2 * 3 * 2 * 2  # orientations x echoes x parts x (NIfTI, JSON)

    rcs = {}
    for name in ('plain', 'annex'):
        rcs[name] = main([str(tmp_path / name), str(tmp_path / f'out_{name}'), 'participant',
                          '-w', str(tmp_path / f'work_{name}'), '--nprocs', '2',
                          '--skip-bids-validation'])
    assert rcs == {'plain': 0, 'annex': 0}

    ours, ref = _outputs(tmp_path / 'out_annex'), _outputs(tmp_path / 'out_plain')
    assert sorted(ours) == sorted(ref)
    assert any(k.endswith('desc-cosmos_Chimap.nii.gz') for k in ours)
    raw_sources = set()
    for key, path in ours.items():
        if key.endswith('_xfm.txt'):
            assert path.read_text() == ref[key].read_text(), key
        elif key.endswith('.nii.gz'):
            a, b = nb.load(path), nb.load(ref[key])
            np.testing.assert_array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj),
                                          err_msg=key)
            np.testing.assert_array_equal(a.affine, b.affine, err_msg=key)
        elif key.endswith('.json') and '/sub-' in f'/{key}':
            meta = json.loads(path.read_text())
            assert meta == json.loads(ref[key].read_text()), key
            for uri in [*meta.get('Sources', []), meta.get('SpatialReference', 'bids:raw:')]:
                assert 'store' not in uri and 'MD5E' not in uri, (key, uri)
                if uri.startswith('bids::'):  # an output of this run: in the derivatives
                    assert (tmp_path / 'out_annex' / 'qsmprep' / uri[6:]).is_file(), (key, uri)
                    continue
                rel = uri.removeprefix('bids:raw:')
                if rel:
                    assert (annex / rel).is_symlink(), (key, uri)  # the dataset's own path
                    raw_sources.add(rel)
    # every raw echo image (mag and phase, every orientation) is named as a source
    raw_images = {p.relative_to(annex).as_posix() for p in annex.rglob('*_MEGRE.nii.gz')}
    assert len(raw_images) == 2 * 3 * 2
    assert raw_images <= raw_sources, sorted(raw_images - raw_sources)
    # the raw dataset is left as it was: links still links, no file added
    assert sum(1 for p in annex.rglob('*') if p.is_symlink()) == n_links


def test_sources_name_the_dataset_path_not_the_annex_object(tmp_path, monkeypatch):
    bids = tmp_path / 'ds'
    obj = bids / '.git' / 'annex' / 'objects' / 'Xy' / 'Zw' / 'MD5E-s1--k.nii.gz'
    obj.parent.mkdir(parents=True)
    obj.write_bytes(b'x')
    link = bids / 'sub-01' / 'anat' / 'sub-01_echo-1_part-mag_MEGRE.nii.gz'
    link.parent.mkdir(parents=True)
    link.symlink_to(os.path.relpath(obj, link.parent))
    expected = 'bids:raw:sub-01/anat/sub-01_echo-1_part-mag_MEGRE.nii.gz'
    assert _raw_uri(bids, link) == expected
    # bids_dir given through a link of its own, and as a relative path
    (tmp_path / 'alias').symlink_to(bids)
    assert _raw_uri(tmp_path / 'alias', link) == expected
    assert _raw_uri(bids, tmp_path / 'alias' / link.relative_to(bids)) == expected
    monkeypatch.chdir(tmp_path)
    assert _raw_uri('ds', Path('ds') / link.relative_to(bids)) == expected
