"""What the container relies on, outside a container: the console script and FSL detection.

The image puts qsmprep, ``bet`` and ``flirt`` in one ``bin`` folder on PATH and sets
``FSLDIR``/``FSLOUTPUTTYPE``; qsmprep picks FSL BET/FLIRT when they are on PATH and its
pure-Python fallbacks otherwise.  Fake ``bet``/``flirt`` executables stand in for FSL here:
they check the command line Nipype builds and write outputs a real FSL would write.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from qsmprep.__about__ import __version__
from qsmprep.workflows.participant import workflow_options

FAKE_BET = '''\
#!{python}
"""Fake FSL bet: bet <in> <out> [-f F] [-m]; writes <out>.nii.gz and <out>_mask.nii.gz."""
import sys
import nibabel as nib
import numpy as np
args = sys.argv[1:]
open({log!r}, 'a').write(' '.join(['bet', *args]) + '\\n')
src, out = args[0], args[1]
frac = float(args[args.index('-f') + 1]) if '-f' in args else 0.5
img = nib.load(src)
data = np.asanyarray(img.dataobj).astype('float32')
mask = (data > frac * data.max()).astype('uint8')
stem = out[:-7] if out.endswith('.nii.gz') else out
nib.save(nib.Nifti1Image(data * mask, img.affine), stem + '.nii.gz')
if '-m' in args:
    nib.save(nib.Nifti1Image(mask, img.affine), stem + '_mask.nii.gz')
'''

FAKE_FLIRT = '''\
#!{python}
"""Fake FSL flirt: writes the identity as -omat and copies -in to -out."""
import shutil
import sys
args = sys.argv[1:]
open({log!r}, 'a').write(' '.join(['flirt', *args]) + '\\n')
opt = {{a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith('-')}}
with open(opt['-omat'], 'w') as f:
    f.write('1 0 0 0\\n0 1 0 0\\n0 0 1 0\\n0 0 0 1\\n')
if '-out' in opt:
    shutil.copy(opt['-in'], opt['-out'])
'''


def _console_script(name: str) -> str:
    cand = Path(sys.executable).with_name(name)
    if cand.is_file():
        return str(cand)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f'console script {name!r} is not installed (pip install -e .)')
    return found


@pytest.fixture
def fake_fsl(tmp_path, monkeypatch):
    """An FSLDIR-like folder whose bin/ holds fake bet and flirt, first on PATH (as in the
    image: PATH=$FSLDIR/bin:...)."""
    fsldir = tmp_path / 'fsl'
    (fsldir / 'bin').mkdir(parents=True)
    log = tmp_path / 'fsl_calls.log'
    for name, template in (('bet', FAKE_BET), ('flirt', FAKE_FLIRT)):
        exe = fsldir / 'bin' / name
        exe.write_text(template.format(python=sys.executable, log=str(log)))
        exe.chmod(0o755)
    monkeypatch.setenv('FSLDIR', str(fsldir))
    monkeypatch.setenv('FSLOUTPUTTYPE', 'NIFTI_GZ')
    monkeypatch.setenv('PATH', f'{fsldir / "bin"}{os.pathsep}{os.environ.get("PATH", "")}')
    return SimpleNamespace(dir=fsldir, log=log)


@pytest.fixture
def no_fsl(tmp_path, monkeypatch):
    """A PATH with no FSL on it (only an empty folder)."""
    empty = tmp_path / 'empty_bin'
    empty.mkdir()
    monkeypatch.setenv('PATH', str(empty))
    monkeypatch.delenv('FSLDIR', raising=False)
    return empty


# ------------------------------------------------------------------------------------------
def test_console_script_is_declared():
    (ep,) = [e for e in md.entry_points(group='console_scripts') if e.name == 'qsmprep']
    assert ep.value == 'qsmprep.cli.run:main'
    assert callable(ep.load())


def test_console_script_version_and_help():
    exe = _console_script('qsmprep')
    proc = subprocess.run([exe, '--version'], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f'qsmprep {__version__}'
    proc = subprocess.run([exe, '--help'], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0 and 'bids_dir' in proc.stdout and '--use-plugin' in proc.stdout


def test_console_script_usage_error_exit_code():
    """The container's exit code is the BIDS-Apps one (64), not argparse's 2."""
    exe = _console_script('qsmprep')
    proc = subprocess.run([exe, '/data', '/out', 'no-such-level'], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 64
    assert 'invalid choice' in proc.stderr


# ------------------------------------------------------------------------------------------
def test_auto_picks_fsl_when_on_path(fake_fsl):
    opts = workflow_options(SimpleNamespace(mask_method='auto', registration='auto'))
    assert opts['mask_method'] == 'bet' and opts['registration'] == 'flirt'


def test_auto_falls_back_without_fsl(no_fsl):
    opts = workflow_options(SimpleNamespace(mask_method='auto', registration='auto'))
    assert opts['mask_method'] == 'python' and opts['registration'] == 'sitk'


def test_non_executable_fsl_is_not_picked(fake_fsl):
    (fake_fsl.dir / 'bin' / 'bet').chmod(0o644)
    opts = workflow_options(SimpleNamespace(mask_method='auto', registration='auto'))
    assert opts['mask_method'] == 'python' and opts['registration'] == 'flirt'


def test_explicit_choice_overrides_detection(no_fsl):
    opts = workflow_options(SimpleNamespace(mask_method='bet', registration='flirt'))
    assert opts['mask_method'] == 'bet' and opts['registration'] == 'flirt'


def test_defaults_without_settings(fake_fsl):
    assert workflow_options(None)['mask_method'] == 'bet'


# ------------------------------------------------------------------------------------------
def _ball(tmp_path, name='mag.nii.gz', shape=(16, 16, 12)):
    grid = np.indices(shape).astype(float)
    centre = (np.array(shape)[:, None, None, None] - 1) / 2
    r = np.sqrt(((grid - centre) ** 2).sum(0))
    data = np.where(r < 5, 100.0, 10.0).astype('float32')
    affine = np.diag([1.0, 1.0, 1.5, 1.0])
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, affine), path)
    return path, data, affine


def test_bet_node_runs_the_bet_on_path(fake_fsl, tmp_path):
    """The masking workflow calls ``bet in out -f F -m`` and reads ``out_mask``."""
    from qsmprep.workflows.orientation import init_brainmask_wf

    mag, data, _ = _ball(tmp_path)
    wf = init_brainmask_wf(method='bet', bet_frac=0.4)
    wf.base_dir = str(tmp_path / 'work')
    wf.inputs.inputnode.magnitude = str(mag)
    graph = wf.run(plugin='Linear')
    (bet,) = [n for n in graph.nodes() if n.name == 'bet']  # identity nodes are pruned
    mask = np.asanyarray(nib.load(bet.result.outputs.mask_file).dataobj)
    np.testing.assert_array_equal(mask, (data > 0.4 * data.max()).astype('uint8'))
    calls = fake_fsl.log.read_text().splitlines()
    assert len(calls) == 1 and calls[0].startswith('bet ')
    assert '-m' in calls[0].split() and '-f 0.40' in calls[0]


def test_flirt_node_runs_the_flirt_on_path(fake_fsl, tmp_path):
    """The registration workflow calls ``flirt`` with 6 dof and converts its matrix; FLIRT's
    identity on one grid is the identity world transform."""
    from qsmprep.workflows.registration import init_registration_wf

    fixed, _, _ = _ball(tmp_path, 'fixed.nii.gz')
    moving, _, _ = _ball(tmp_path, 'moving.nii.gz')
    wf = init_registration_wf(method='flirt')
    wf.base_dir = str(tmp_path / 'work')
    wf.inputs.inputnode.moving = str(moving)
    wf.inputs.inputnode.fixed = str(fixed)
    graph = wf.run(plugin='Linear')
    (to_world,) = [n for n in graph.nodes() if n.name == 'flirt_to_world']
    xfm = np.loadtxt(to_world.result.outputs.out_xfm)
    np.testing.assert_allclose(xfm, np.eye(4), atol=1e-6)
    call = fake_fsl.log.read_text().splitlines()[0].split()
    assert call[0] == 'flirt' and call[call.index('-dof') + 1] == '6'


def test_image_environment_script_is_consistent(tmp_path):
    """The image's PATH layout: qsmprep, bet and flirt resolve from one folder."""
    env_bin = tmp_path / 'opt' / 'conda' / 'envs' / 'qsmprep' / 'bin'
    env_bin.mkdir(parents=True)
    for name in ('qsmprep', 'bet', 'flirt'):
        exe = env_bin / name
        exe.write_text(textwrap.dedent('''\
            #!/bin/sh
            exit 0
            '''))
        exe.chmod(0o755)
    path = f'{env_bin}{os.pathsep}/usr/bin:/bin'
    for name in ('qsmprep', 'bet', 'flirt'):
        assert shutil.which(name, path=path) == str(env_bin / name)
