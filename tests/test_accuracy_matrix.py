"""benchmarks/accuracy_matrix.py: the metrics on analytic cases, and one tiny case end to end."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / 'benchmarks' / 'accuracy_matrix.py'


@pytest.fixture(scope='module')
def am():
    spec = importlib.util.spec_from_file_location('accuracy_matrix', SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_aligned_nrmse_ignores_the_constant(am):
    rng = np.random.default_rng(0)
    y = rng.normal(0.05, 0.02, (8, 8, 8))
    m = np.ones(y.shape, bool)
    assert am.nrmse_aligned(y - 0.3, y, m) == pytest.approx(0.0, abs=1e-9)
    # a scaled map keeps the error of its scaled deviations
    e = 100 * np.linalg.norm(0.5 * (y - y.mean())) / np.linalg.norm(y)
    assert am.nrmse_aligned(1.5 * y, y, m) == pytest.approx(e)


def test_tensor_metrics_of_a_rotated_fibre(am):
    # analytic: tensor Δχ(f fᵀ − I/3) with f rotated by 30° → MSA Δχ, PEV angle 30°
    shape = (4, 4, 4)
    m = np.ones(shape, bool)
    msa = np.full(shape, 0.02)
    a = np.radians(30.0)
    pev_t = np.broadcast_to([0.0, 0.0, 1.0], (*shape, 3))
    pev = np.broadcast_to([0.0, -np.sin(a), -np.cos(a)], (*shape, 3))   # sign-free
    out = am.tensor_metrics(0.5 * msa, pev, msa, pev_t, m)
    assert out['msa_nrmse'] == pytest.approx(50.0)
    assert out['msa_median_ratio_wm'] == pytest.approx(0.5)
    assert out['pev_median_angle_deg_wm'] == pytest.approx(30.0)


def test_unknown_settings_are_dropped_with_a_note(am):
    settings, notes = am.case_settings({'orientations': 12, 'no_such_effect': True})
    assert settings['orientations'] == 12 and 'no_such_effect' not in settings
    assert len(notes) == 1 and 'no_such_effect' in notes[0]


def test_every_case_is_a_valid_simulation(am):
    from qsmprep.simulate.presets import resolve_config

    for _, overrides in {**am.CASES, **am.TINY}.values():
        s, _ = am.case_settings(overrides)
        preset = s.pop('preset')
        resolve_config(preset, **s)  # raises on an invalid value
    assert set(am.QUICK) <= set(am.CASES)


def test_write_docs_replaces_only_its_section(am, tmp_path):
    doc = tmp_path / 'benchmarks.md'
    doc.write_text('# Benchmarks\n\n## Other\n\ntext\n')
    am.write_docs('| table one |\n', doc)
    am.write_docs('| table two |\n', doc)
    text = doc.read_text()
    assert text.count(am.BEGIN) == 1 and text.count(am.END) == 1
    assert 'table two' in text and 'table one' not in text
    assert text.startswith('# Benchmarks\n\n## Other\n\ntext\n')


@pytest.mark.slow
def test_tiny_case_end_to_end(am, tmp_path):
    result = am.run(['tiny'], keep=tmp_path, log=lambda s: None)
    rec = result['cases']['tiny']
    assert rec.get('returncode') == 0, rec.get('stderr_tail') or rec.get('error')
    m = rec['metrics']
    assert m['b0_error_deg_max'] < 1.0
    for a, row in m['orientations'].items():
        assert 0.5 < row['mask']['dice'] <= 1 and 0 < row['mask']['coverage'] <= 1, a
        assert row['local_field']['energy_ratio'] > 0, a
    # the per-k closed forms on the exact local fields beat the pipeline; the pipeline's own
    # solver on those fields need not (single-step fits an SMV-filtered data term)
    closed = m['oracle'] if m['oracle']['solver'] == 'closed-form' else m['oracle_closed_form']
    assert m['oracle_other_solver'] != m['oracle']['solver']
    for key in ('chi33', 'mms', 'cosmos'):
        ours, oracle = m['end_to_end'][key], m['oracle'][key]
        assert closed[key]['nrmse'] < ours['nrmse'], key
        assert m['gap_points'][key] == pytest.approx(ours['nrmse'] - oracle['nrmse'])
        assert 0 < ours['xsim'] <= 1 and ours['dgm_slope'] > 0, key
        assert set(ours['dgm_labels']) == set(range(1, 7)) | set(range(9, 15)), key
    assert 0 < m['end_to_end']['tensor']['pev_median_angle_deg_wm'] < 90
    json.dumps(result, default=am._jsonable)
    md = am.markdown(result)
    assert '`tiny`' in md and 'DGM slope' in md
