"""Participant runs against concurrency, full disks, re-runs and signals (issue 11).

Every run either completes or fails loudly with a documented exit code, and ``output_dir``
never holds a truncated file nor loses earlier complete results.  Full disks are real: a
small ``tmpfs`` is mounted for ``output_dir`` or the work directory (root only; those tests
are skipped elsewhere); atomic writes are also checked by fault injection without a mount.
Data: the ``tiny`` preset with 2 participants and 2 orientations.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import nibabel as nb
import numpy as np
import pytest

from qsmprep.cli.run import main
from qsmprep.utils.fsutils import TMP_MARK

ACQS = ('ori01', 'ori02')


def _expected_anat(bids: Path, sub: str) -> set[str]:
    """The file names the graph's sink nodes write into ``sub-<sub>/anat`` with the
    command line's default options (NIfTI/text files and their JSON sidecars)."""
    from qsmprep.cli.config import Settings
    from qsmprep.cli.parser import build_parser
    from qsmprep.interfaces.bids import DerivativesSink
    from qsmprep.io.bids import collect_subjects
    from qsmprep.workflows.participant import init_qsmprep_wf, workflow_options

    settings = Settings.from_namespace(build_parser().parse_args(
        [str(bids), str(bids.parent / 'unused'), 'participant']))
    wf = init_qsmprep_wf(collect_subjects(bids, [sub]), bids_dir=bids,
                         staging_dir=bids.parent / 'unused', work_dir=bids.parent / 'unused',
                         options=workflow_options(settings))
    names = set()
    for node in wf._get_all_nodes():
        if isinstance(node.interface, DerivativesSink):
            out = Path(node.inputs.out_path)
            assert out.parent.name == 'anat'
            names.add(out.name)
            if node.inputs.metadata:
                names.add(out.name.split('.')[0] + '.json')
    assert len(names) > 10
    return names


def _cmd(bids, out, *extra):
    return [sys.executable, '-m', 'qsmprep.cli.run', str(bids), str(out), 'participant',
            '--skip-bids-validation', '--nprocs', '2', *extra]


def _in_process(bids, out, work, *extra):
    return main([str(bids), str(out), 'participant', '-w', str(work), '--skip-bids-validation',
                 '--nprocs', '2', *extra])


def _leftovers(root: Path) -> list[str]:
    """Temporary files and half-built or moved-aside folders under ``root``."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob('*')
                  if TMP_MARK in p.name or p.name.endswith(('.partial', '.old')))


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob('*'))
            if p.is_file()}


def _assert_same_outputs(a: Path, b: Path) -> None:
    """Same files; NIfTI data and affines identical; JSON equal; other files byte-equal."""
    fa = {p.relative_to(a).as_posix() for p in a.rglob('*') if p.is_file()}
    fb = {p.relative_to(b).as_posix() for p in b.rglob('*') if p.is_file()}
    assert fa == fb, sorted(fa ^ fb)
    for rel in sorted(fa):
        pa, pb = a / rel, b / rel
        if rel.endswith('.nii.gz'):
            ia, ib = nb.load(pa), nb.load(pb)
            np.testing.assert_array_equal(np.asanyarray(ia.dataobj), np.asanyarray(ib.dataobj),
                                          err_msg=rel)
            np.testing.assert_array_equal(ia.affine, ib.affine, err_msg=rel)
        elif rel.endswith('.json'):
            assert json.loads(pa.read_text()) == json.loads(pb.read_text()), rel
        else:
            assert pa.read_bytes() == pb.read_bytes(), rel


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from qsmprep.simulate import simulate_dataset

    root = tmp_path_factory.mktemp('robust')
    bids = root / 'bids'
    simulate_dataset(bids, preset='tiny', subjects=2, orientations=len(ACQS), seed=0, jobs=1)
    return SimpleNamespace(root=root, bids=bids)


@pytest.fixture(scope='module')
def pair(data):
    """Two participants into one output_dir with the default work dir (``./work``), as a
    SLURM array runs them: the second starts while the first is writing its outputs (the
    first sink nodes have run), which is when a shared staging folder lost files."""
    def start(sub):
        return subprocess.Popen(_cmd(data.bids, data.root / 'out', '--participant-label', sub),
                                cwd=data.root, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    first = start('01')
    staging, t0 = data.root / 'work' / 'staging', time.monotonic()
    while (first.poll() is None and time.monotonic() - t0 < 600
           and not any(p.is_file() for p in staging.rglob('*.nii.gz'))):
        time.sleep(0.1)
    overlapped = first.poll() is None
    procs = {'01': first, '02': start('02')}
    logs = {sub: p.communicate(timeout=900)[0] for sub, p in procs.items()}
    return SimpleNamespace(rc={s: p.returncode for s, p in procs.items()}, logs=logs,
                           overlapped=overlapped, deriv=data.root / 'out' / 'qsmprep',
                           work=data.root / 'work', **vars(data))


@pytest.fixture
def small_disk(tmp_path):
    """``make(name, kib)``: a folder on a fresh tmpfs of ``kib`` KiB (skip if not root)."""
    if os.geteuid() != 0 or shutil.which('mount') is None:
        pytest.skip('mounting a tmpfs needs root')
    mounted = []

    def make(name, kib):
        d = tmp_path / name
        d.mkdir()
        r = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={int(kib)}k', 'tmpfs', str(d)],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f'cannot mount a tmpfs: {r.stderr.strip()}')
        mounted.append(d)
        return d

    yield make
    for d in mounted:
        subprocess.run(['umount', '-l', str(d)], check=False)


# ------------------------------------------------------------------------------------------
# atomic writes (fault injection, no mount needed)

def test_sink_leaves_no_truncated_file_on_enospc(tmp_path, monkeypatch):
    from qsmprep.interfaces.bids import DerivativesSink

    src = tmp_path / 'in.nii.gz'
    nb.Nifti1Image(np.arange(64, dtype=np.float32).reshape(4, 4, 4), np.eye(4)).to_filename(src)
    out = tmp_path / 'anat' / 'sub-01_desc-x_Chimap.nii.gz'

    def half_then_full(self, filename):
        Path(filename).write_bytes(b'\x1f\x8b half a file')
        raise OSError(errno.ENOSPC, 'No space left on device', str(filename))

    monkeypatch.setattr(nb.Nifti1Image, 'to_filename', half_then_full)
    sink = DerivativesSink(in_file=str(src), out_path=str(out), metadata={'Units': 'ppm'})
    with pytest.raises(OSError, match='No space left'):
        sink._run_interface(SimpleNamespace())
    assert list(out.parent.iterdir()) == []
    monkeypatch.undo()
    sink._run_interface(SimpleNamespace())
    assert sorted(p.name for p in out.parent.iterdir()) == [
        'sub-01_desc-x_Chimap.json', out.name]
    np.testing.assert_array_equal(nb.load(out).get_fdata(), nb.load(src).get_fdata())


def test_only_temporaries_of_ended_processes_are_removed(tmp_path):
    from qsmprep.utils.fsutils import remove_stale_temporaries, temporary_name

    keep = tmp_path / 'sub-01' / 'anat' / 'a.nii.gz'
    keep.parent.mkdir(parents=True)
    keep.write_bytes(b'complete')
    mine = temporary_name(keep)          # a write in progress (this process): kept
    mine.write_bytes(b'being written')
    assert mine.name.endswith('.nii.gz') and mine.name.startswith('.')
    ended = subprocess.run([sys.executable, '-c', (
        'from qsmprep.utils.fsutils import temporary_name; '
        f'temporary_name({str(keep)!r}).write_bytes(b"trunc")')], check=True)
    assert ended.returncode == 0
    left = sorted(p for p in keep.parent.iterdir() if p not in (keep, mine))
    assert len(left) == 1                # written by a process that has ended (killed run)
    assert remove_stale_temporaries(tmp_path) == left
    assert sorted(keep.parent.iterdir()) == sorted([keep, mine])
    old = time.time() - 7 * 3600        # any temporary older than 6 h goes too
    os.utime(mine, (old, old))
    other = mine.with_name(mine.name.replace(mine.name.split('-')[0], '.otherhost', 1))
    mine.rename(other)
    assert remove_stale_temporaries(tmp_path) == [other]


def test_lock_excludes_a_second_holder(tmp_path):
    from qsmprep.utils.fsutils import file_lock, try_lock

    lock = tmp_path / '.lock'
    with file_lock(lock):
        probe = subprocess.run([sys.executable, '-c', (
            'import sys; from qsmprep.utils.fsutils import try_lock; '
            f'sys.exit(0 if try_lock({str(lock)!r}) is None else 3)')])
        assert probe.returncode == 0  # another process cannot take it
    fd = try_lock(lock)
    assert fd is not None
    os.close(fd)


# ------------------------------------------------------------------------------------------
# concurrency

@pytest.mark.slow
def test_concurrent_participants_share_output_and_work_dir(pair):
    assert pair.overlapped  # the second run started while the first was writing
    assert pair.rc == {'01': 0, '02': 0}, pair.logs
    for sub in ('01', '02'):
        anat = pair.deriv / f'sub-{sub}' / 'anat'
        assert {p.name for p in anat.iterdir()} == _expected_anat(pair.bids, sub)
        logs = list((pair.deriv / f'sub-{sub}' / 'log').glob('qsmprep_*_files.txt'))
        assert len(logs) == 1
        listed = set(logs[0].read_text().split())
        assert listed == {f'sub-{sub}/anat/{n}' for n in _expected_anat(pair.bids, sub)}
        assert (pair.deriv / f'sub-{sub}.html').is_file()
    for name in ('dataset_description.json', '.bidsignore', 'logs/CITATION.md'):
        assert (pair.deriv / name).is_file()
    assert json.loads((pair.deriv / 'dataset_description.json').read_text())[
        'DatasetType'] == 'derivative'
    assert _leftovers(pair.deriv) == []
    assert [p.name for p in (pair.work / 'staging').iterdir()] == []  # per-run staging gone


# ------------------------------------------------------------------------------------------
# re-runs

@pytest.mark.slow
def test_rerun_keeps_user_files_and_earlier_logs(pair, tmp_path):
    deriv = tmp_path / 'qsmprep'
    shutil.copytree(pair.deriv, deriv)
    sub = deriv / 'sub-01'
    (sub / 'anat' / 'my_notes.txt').write_text('mine')
    (sub / 'qc').mkdir()
    (sub / 'qc' / 'rating.tsv').write_text('ok\n')
    # an output of an earlier qsmprep run (listed in its file list) that this run does not redo
    manifest = next((sub / 'log').glob('qsmprep_*_files.txt'))
    stale = 'sub-01/anat/sub-01_space-ori01_desc-old_Chimap.nii.gz'
    (deriv / stale).write_bytes(b'old')
    manifest.write_text(manifest.read_text() + stale + '\n')
    old_logs = {p.name for p in (sub / 'log').iterdir()}
    other = _snapshot(deriv / 'sub-02')

    assert _in_process(pair.bids, deriv, pair.work, '--participant-label', '01') == 0
    assert (sub / 'anat' / 'my_notes.txt').read_text() == 'mine'
    assert (sub / 'qc' / 'rating.tsv').read_text() == 'ok\n'
    assert not (deriv / stale).exists()
    new_logs = {p.name for p in (sub / 'log').iterdir()}
    assert old_logs < new_logs and len(new_logs) >= len(old_logs) + 2  # toml + file list
    assert {p.name for p in (sub / 'anat').iterdir()} == _expected_anat(pair.bids, '01') | {
        'my_notes.txt'}
    _assert_same_outputs(pair.deriv / 'sub-01' / 'anat', _without(sub / 'anat',
                                                                  'my_notes.txt', tmp_path))
    assert _snapshot(deriv / 'sub-02') == other  # the other participant untouched
    assert _leftovers(deriv) == []


def _without(folder: Path, name: str, tmp: Path) -> Path:
    copy = tmp / 'cmp' / folder.name
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns(name))
    return copy


# ------------------------------------------------------------------------------------------
# full disks

def test_full_work_dir_is_refused_before_starting(data, small_disk, capsys):
    work = small_disk('work', 2048)
    out = data.root / 'never'
    rc = _in_process(data.bids, out / 'qsmprep', work, '--participant-label', '01')
    err = capsys.readouterr().err
    assert rc == 74
    assert 'not enough free space in the work directory' in err and str(work) in err
    assert not (out / 'qsmprep' / 'sub-01').exists()


def test_work_dir_filling_up_mid_run_fails_fast(data, small_disk, tmp_path):
    """Nipype's MultiProc waited for ever for a node whose result file could not be written."""
    work = small_disk('work', 3072)
    out = tmp_path / 'qsmprep'
    code = ('import sys; import qsmprep.workflows.participant as p; p.MIN_FREE_WORK = 0; '
            'from qsmprep.cli.run import main; sys.exit(main(sys.argv[1:]))')
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, '-c', code, *_cmd(data.bids, out)[3:],
                           '-w', str(work), '--participant-label', '01'],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 74, proc.stderr[-3000:]
    assert 'no space left in the work directory' in proc.stderr
    assert time.monotonic() - t0 < 300
    assert not (out / 'sub-01').exists() and _leftovers(out) == [] if out.exists() else True


@pytest.mark.slow
def test_full_output_dir_keeps_earlier_results(pair, small_disk, monkeypatch, capsys):
    """A re-run over finished results on a nearly full disk: refused by the free-space check;
    with the check disabled the copy itself hits ENOSPC.  Either way exit 74, earlier results
    intact, no truncated or temporary file."""
    import qsmprep.workflows.participant as participant

    used = sum(max(p.stat().st_size, 4096) for p in pair.deriv.rglob('*') if p.is_file())
    disk = small_disk('out', used // 1024 + 200)
    deriv = disk / 'qsmprep'
    shutil.copytree(pair.deriv, deriv)
    before = _snapshot(deriv)

    assert _in_process(pair.bids, deriv, pair.work, '--participant-label', '01') == 74
    assert 'not enough free space in the output directory' in capsys.readouterr().err
    assert _snapshot(deriv) == before

    monkeypatch.setattr(participant, 'OUTPUT_MARGIN', -2**40)  # no pre-check: fill the disk
    assert _in_process(pair.bids, deriv, pair.work, '--participant-label', '01') == 74
    err = capsys.readouterr().err
    assert 'no space left in the output directory' in err, err[-2000:]
    after = _snapshot(deriv)
    assert {k: v for k, v in after.items() if k != 'logs/.qsmprep.lock'} == {
        k: v for k, v in before.items() if k != 'logs/.qsmprep.lock'}
    assert _leftovers(deriv) == []


@pytest.mark.slow
def test_new_output_on_full_disk_writes_no_subject(pair, small_disk, monkeypatch, capsys):
    import qsmprep.workflows.participant as participant

    deriv = small_disk('out', 256) / 'qsmprep'
    monkeypatch.setattr(participant, 'OUTPUT_MARGIN', -2**40)
    assert _in_process(pair.bids, deriv, pair.work, '--participant-label', '02') == 74
    assert 'no space left in the output directory' in capsys.readouterr().err
    assert not (deriv / 'sub-02').exists() and _leftovers(deriv) == []
    for p in deriv.rglob('*.nii.gz'):  # nothing truncated under a real name
        nb.load(p).get_fdata()


# ------------------------------------------------------------------------------------------
# signals and kill -9

def _start(data, out, work, sub):
    # SIGINT as from a terminal: default disposition (a shell's background job ignores it)
    return subprocess.Popen(_cmd(data.bids, out, '-w', str(work), '--participant-label', sub),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _results(work: Path) -> int:
    return len(list(work.glob('qsmprep_wf/**/result_*.pklz')))


def _wait_for_nodes(proc, work, n, timeout=300):
    t0 = time.monotonic()
    while _results(work) < n:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() - t0 < timeout, 'the run made no progress'
        time.sleep(0.2)


def _children(pid: int) -> list[int]:
    path = Path(f'/proc/{pid}/task/{pid}/children')
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        stat = Path(f'/proc/{pid}/stat').read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(')', 1)[1].split()[0] != 'Z'


def _gone(pids, timeout=10.0) -> list[int]:
    t0 = time.monotonic()
    while any(_alive(p) for p in pids) and time.monotonic() - t0 < timeout:
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


@pytest.mark.slow
@pytest.mark.skipif(not Path('/proc/self/task').is_dir(), reason='needs Linux /proc')
def test_signals_and_kill_then_rerun_gives_identical_outputs(pair, tmp_path):
    """Ctrl-C (SIGINT to the process group) → 130 without traceback; SIGTERM to the main
    process only → 143 and no worker left; kill -9 → workers die too; after all three the
    same command with the same work dir gives outputs identical to an uninterrupted run."""
    out, work = tmp_path / 'qsmprep', tmp_path / 'work'
    steps = []
    for how in ('SIGINT', 'SIGTERM', 'SIGKILL'):
        proc = _start(pair, out, work, '02')
        _wait_for_nodes(proc, work, _results(work) + 2)
        workers = _children(proc.pid)
        if how == 'SIGINT':
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, getattr(signal, how))
        log = proc.communicate(timeout=120)[0]
        steps.append((how, proc.returncode, workers, _gone(workers), log))
        assert not (out / 'sub-02').exists() and _leftovers(out) == [] if out.exists() else True
    (_, rc_int, w_int, left_int, log_int), (_, rc_term, w_term, left_term, log_term), \
        (_, rc_kill, w_kill, left_kill, _) = steps
    assert rc_int == 130 and 'Traceback' not in log_int, log_int[-3000:]
    assert 'interrupted (SIGINT)' in log_int
    assert rc_term == 143 and 'terminated (SIGTERM)' in log_term, log_term[-3000:]
    assert rc_kill == -signal.SIGKILL
    assert w_int and w_term and w_kill  # the runs had MultiProc workers
    assert left_int == left_term == left_kill == []
    rerun = subprocess.run(_cmd(pair.bids, out, '-w', str(work), '--participant-label', '02'),
                           capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    _assert_same_outputs(pair.deriv / 'sub-02' / 'anat', out / 'sub-02' / 'anat')
