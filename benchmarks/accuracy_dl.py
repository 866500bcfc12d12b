"""Accuracy check: a briefly trained MoDL-QSM vs TKD on a held-out simulated subject.

Simulates a small cohort (``qsmprep.simulate``), builds a 3D patch dataset from the
simulator's truth (true local field → true apparent susceptibility ``bᵀχb``) with the last
subject held out, trains MoDL-QSM on the others, and compares, on every orientation of the
held-out subject, the MoDL-QSM prediction and a TKD inversion (threshold 0.15, the
participant-level default) of the same masked local field with the true apparent
susceptibility: NRMSE (%, plain and demeaned), HFEN (%, 2016 kernel) and XSIM inside the
brain mask.  Writes ``accuracy_dl.json`` and prints a Markdown table.

Usage (about 15-30 min on 2 CPU cores)::

    python benchmarks/accuracy_dl.py --work /tmp/qsmprep-acc
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--work', type=Path, default=Path('accuracy_dl_work'))
    p.add_argument('--preset', default='tiny')
    p.add_argument('--subjects', type=int, default=4)
    p.add_argument('--seed', type=int, default=1)
    p.add_argument('--patch', type=int, default=24)
    p.add_argument('--stride', type=int, default=8)
    p.add_argument('--epochs', type=int, default=6)
    p.add_argument('--steps-per-epoch', type=int, default=80)
    p.add_argument('--batch-size', type=int, default=2)
    p.add_argument('--learning-rate', type=float, default=2e-3)
    p.add_argument('--model-params', type=json.loads,
                   default={'width': 8, 'levels': 2, 'iterations': 3})
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--resume', action='store_true')
    p.add_argument('--out', type=Path, default=None, help='JSON result (default in --work)')
    ns = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s', datefmt='%H:%M:%S')
    work = ns.work.absolute()
    work.mkdir(parents=True, exist_ok=True)
    bids = work / 'bids'
    t0 = time.time()
    if not (bids / 'dataset_description.json').is_file():
        from qsmprep.simulate import simulate_dataset

        simulate_dataset(bids, preset=ns.preset, subjects=ns.subjects, seed=ns.seed)
    t_sim = time.time() - t0
    truth = bids / 'derivatives' / 'qsmprep-simulate'

    from qsmprep.dl.config import TrainConfig
    from qsmprep.dl.data import build_dataset, find_pairs, load_pair, read_manifest

    pairs = find_pairs(truth, source='simulate-truth')
    held = sorted({q.subject for q in pairs})[-1]
    ds = work / 'dataset'
    if not (ds / 'manifest.json').is_file():
        build_dataset(ds, pairs=pairs, patch_shape=ns.patch, stride=ns.stride,
                      validation_subjects=[held], seed=ns.seed)
    manifest = read_manifest(ds)

    from qsmprep.dl.train import train

    cfg = TrainConfig(model='modl', model_params=ns.model_params, epochs=ns.epochs,
                      steps_per_epoch=ns.steps_per_epoch, batch_size=ns.batch_size,
                      learning_rate=ns.learning_rate, seed=ns.seed, checkpoint_every=50,
                      validation_batches=20)
    t1 = time.time()
    model_dir = work / 'model'
    if not (model_dir / 'model.json').is_file():
        from qsmprep.dl.train import latest_checkpoint

        train(manifest, model_dir, cfg, threads=ns.threads,
              resume=ns.resume or latest_checkpoint(model_dir) is not None)
    t_train = time.time() - t1

    from qsmprep.dl.infer import load_model, predict_volume
    from qsmprep.numerics.inversion import tkd
    from qsmprep.numerics.metrics import hfen, nrmse, xsim

    model, meta = load_model(model_dir, threads=ns.threads)
    rows = []
    t2 = time.time()
    for q in [q for q in pairs if q.subject == held]:
        field, mask, label = load_pair(q)
        chi_true = label[..., 0]
        chi_dl = predict_volume(model, meta, field, mask, b0_direction=q.b0_direction,
                                voxel_size=q.voxel_size, mode='patches')
        chi_tkd = tkd(field, voxel_size=q.voxel_size, b0_direction=q.b0_direction,
                      threshold=0.15, mask=mask)
        chi_tkd = (chi_tkd - chi_tkd[mask].mean()) * mask  # as the participant level
        row = {'orientation': q.orientation, 'b0': list(q.b0_direction)}
        for name, chi in (('modl', chi_dl), ('tkd', chi_tkd)):
            row[name] = {'nrmse': nrmse(chi, chi_true, mask),
                         'nrmse_demeaned': nrmse(chi, chi_true, mask, demean=True),
                         'hfen': hfen(chi, chi_true, mask), 'xsim': xsim(chi, chi_true, mask)}
        rows.append(row)
    t_eval = time.time() - t2
    summary = {k: {m: float(np.mean([r[k][m] for r in rows]))
                   for m in ('nrmse', 'nrmse_demeaned', 'hfen', 'xsim')}
               for k in ('modl', 'tkd')}
    result = {'held_out_subject': held, 'preset': ns.preset, 'subjects': ns.subjects,
              'seed': ns.seed, 'source': 'simulate-truth',
              'train_config': cfg.to_dict(), 'counts': manifest['counts'],
              'training_steps': meta['training']['steps'],
              'seconds': {'simulate': round(t_sim, 1), 'train': round(t_train, 1),
                          'evaluate': round(t_eval, 1)},
              'per_orientation': rows, 'mean': summary,
              'modl_beats_tkd': summary['modl']['nrmse'] < summary['tkd']['nrmse']}
    out = ns.out or work / 'accuracy_dl.json'
    out.write_text(json.dumps(result, indent=2) + '\n')
    print(f'\nheld-out sub-{held}, {len(rows)} orientations (mean):\n')
    print('| method | NRMSE % | NRMSE % (demeaned) | HFEN % | XSIM |')
    print('|---|---|---|---|---|')
    for k, label in (('tkd', 'TKD (0.15)'), ('modl', 'MoDL-QSM')):
        s = summary[k]
        print(f"| {label} | {s['nrmse']:.1f} | {s['nrmse_demeaned']:.1f} | {s['hfen']:.1f} | "
              f"{s['xsim']:.3f} |")
    print(f'\nwritten {out}')
    return 0 if result['modl_beats_tkd'] else 1


if __name__ == '__main__':
    raise SystemExit(main())
