"""The settings of one qsmprep run: a small frozen object, dumped to TOML for provenance.

Only the command line builds a :class:`Settings` (from the parsed arguments) and only the
top-level workflow (``qsmprep.workflows.participant``) reads it; everything below gets explicit
keyword arguments.  The processing options take their defaults from
:data:`qsmprep.options.DEFAULTS` (:meth:`Settings.options` gives them as a
:class:`~qsmprep.options.PipelineOptions`); the group-level (``dl_*``) defaults are the field
defaults here, which the parser reads.

A run's settings file (``sub-<label>/log/qsmprep_<run_uuid>.toml``, one ``[settings]`` table
of flat keys) can be passed back with ``--config-file`` (:func:`read_config_file`) to repeat
the run.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import tomllib
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from qsmprep.__about__ import __version__
from qsmprep.io.errors import MissingInputError, UsageError
from qsmprep.options import DEFAULTS, PipelineOptions

__all__ = ['DEFAULT_WORK_DIR', 'MAX_OMP_THREADS', 'PER_RUN', 'Settings', 'default_nprocs',
           'read_config_file']

#: Default ``--omp-nthreads``: ``min(nprocs, MAX_OMP_THREADS)``.
MAX_OMP_THREADS = 8
#: Default ``-w/--work-dir``, relative to the current directory.
DEFAULT_WORK_DIR = 'work'
#: Keys of a settings file that describe one run, not its options: never read from
#: ``--config-file`` (the positional arguments always come from the command line).
PER_RUN = ('run_uuid', 'created', 'version', 'command_line', 'bids_dir', 'output_dir',
           'analysis_level')


def default_nprocs() -> int:
    """CPUs available to this process (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS/Windows
        return os.cpu_count() or 1


_PATHS = ('bids_dir', 'output_dir', 'work_dir', 'derivatives', 'model', 'plugin_file')
#: Path settings that a ``--config-file`` may give, relative to the file's folder.
_FILE_PATHS = ('work_dir', 'derivatives', 'model', 'plugin_file')
_TUPLES = ('participant_labels', 'session_labels', 'vsharp_radii', 'inversions')
#: Group-level (training) options, same name in the argparse namespace and here.
_TRAINING = ('resume', 'dl_model', 'dl_source', 'dl_epochs', 'dl_steps_per_epoch',
             'dl_batch_size', 'dl_learning_rate', 'dl_lr_schedule', 'dl_patch_size',
             'dl_validation', 'dl_seed', 'dl_checkpoint_every', 'dl_mixed_precision',
             'dl_model_params', 'dl_name')


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every option of a run (see ``qsmprep --help`` for their meaning).

    Units: ``mem_gb`` in GB, ``vsharp_radii`` in mm, ``mask_erosion`` in voxels.
    ``vsharp_radii=None`` means the default radii of
    :func:`qsmprep.numerics.bgremoval.vsharp_radii` for the data's voxel size.
    ``bids_filters`` is the validated content of ``--bids-filter-file``
    (:func:`qsmprep.io.bids.read_bids_filters`); ``command_line`` the command as typed
    (shell-quoted), for the report.

    >>> s = Settings(bids_dir=Path('/data'), output_dir=Path('/data/derivatives/qsmprep'),
    ...              work_dir=Path('/scratch/work'), nprocs=2, omp_nthreads=2,
    ...              run_uuid='x', created='2025-01-01T00:00:00+00:00')
    >>> Settings.from_toml(s.to_toml()) == s
    True
    >>> s.nipype_plugin()
    ('MultiProc', {'n_procs': 2, 'raise_insufficient': False})
    """

    bids_dir: Path
    output_dir: Path
    work_dir: Path
    analysis_level: str = 'participant'
    participant_labels: tuple[str, ...] | None = None
    session_labels: tuple[str, ...] | None = None
    nprocs: int = 1
    omp_nthreads: int = 1
    mem_gb: float | None = None
    plugin: str = 'MultiProc'
    plugin_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    plugin_file: Path | None = None
    skip_bids_validation: bool = False
    verbosity: int = 0
    boilerplate_only: bool = False
    validate_only: bool = False
    stop_on_first_crash: bool = False
    reference_orientation: str | None = None
    derivatives: Path | None = None
    bids_filters: dict[str, Any] | None = None
    # processing options: defaults from qsmprep.options (tests/cli/test_defaults.py)
    mask_method: str = DEFAULTS.mask_method
    mask_erosion: int = DEFAULTS.mask_erosion
    mask_threshold: float = DEFAULTS.mask_threshold
    unwrapping: str = DEFAULTS.unwrapping
    echo_combination: str = DEFAULTS.echo_combination
    bgremoval: str = DEFAULTS.bgremoval
    vsharp_radii: tuple[float, ...] | None = DEFAULTS.vsharp_radii
    vsharp_threshold: float = DEFAULTS.vsharp_threshold
    tkd_threshold: float = DEFAULTS.tkd_threshold
    inversions: tuple[str, ...] = DEFAULTS.inversions
    multi_solver: str = DEFAULTS.multi_solver
    sti_regularization: float | None = DEFAULTS.sti_regularization
    registration: str = DEFAULTS.registration
    model: Path | None = DEFAULTS.model
    # group level (training): the defaults of the command line
    resume: bool = False
    dl_model: str = 'modl'
    dl_source: str = 'derivatives'
    dl_epochs: int = 10
    dl_steps_per_epoch: int | None = None
    dl_batch_size: int = 2
    dl_learning_rate: float = 1e-3
    dl_lr_schedule: str = 'cosine'
    dl_patch_size: int | None = None
    dl_validation: float = 0.2
    dl_seed: int = 0
    dl_checkpoint_every: int = 200
    dl_mixed_precision: str = 'auto'
    dl_model_params: dict[str, Any] | None = None
    dl_name: str | None = None
    version: str = __version__
    command_line: str | None = None
    run_uuid: str = dataclasses.field(
        default_factory=lambda: f'{datetime.now():%Y%m%d-%H%M%S}_{uuid.uuid4()}'
    )
    created: str = dataclasses.field(
        default_factory=lambda: datetime.now(UTC).isoformat(timespec='seconds')
    )

    # ----------------------------------------------------------------------------------------
    @classmethod
    def from_namespace(cls, ns, *, plugin: str = 'MultiProc',
                       plugin_args: dict | None = None, bids_filters: dict | None = None,
                       command_line: str | None = None) -> Settings:
        """Build from the :mod:`argparse` namespace of :func:`qsmprep.cli.parser.build_parser`.

        Relative paths are made absolute; the work directory defaults to ``./work``.
        """
        def absolute(p):
            return None if p is None else Path(p).expanduser().absolute()

        nprocs = ns.nprocs or default_nprocs()
        return cls(
            bids_dir=absolute(ns.bids_dir),
            output_dir=absolute(ns.output_dir),
            work_dir=absolute(ns.work_dir) if ns.work_dir else Path.cwd() / DEFAULT_WORK_DIR,
            analysis_level=ns.analysis_level,
            participant_labels=tuple(ns.participant_label) if ns.participant_label else None,
            session_labels=tuple(ns.session_label) if ns.session_label else None,
            nprocs=nprocs,
            omp_nthreads=ns.omp_nthreads or min(nprocs, MAX_OMP_THREADS),
            mem_gb=ns.mem,
            plugin=plugin,
            plugin_args=dict(plugin_args or {}),
            plugin_file=absolute(ns.use_plugin),
            skip_bids_validation=ns.skip_bids_validation,
            verbosity=ns.verbose,
            boilerplate_only=ns.boilerplate_only,
            validate_only=ns.validate_only,
            stop_on_first_crash=ns.stop_on_first_crash,
            reference_orientation=ns.reference_orientation,
            derivatives=absolute(ns.derivatives),
            bids_filters=bids_filters or None,
            mask_method=ns.mask_method,
            mask_erosion=ns.mask_erosion,
            mask_threshold=ns.mask_threshold,
            unwrapping=ns.unwrapping,
            echo_combination=ns.echo_combination,
            bgremoval=ns.bgremoval,
            vsharp_radii=tuple(ns.vsharp_radii) if ns.vsharp_radii else None,
            vsharp_threshold=ns.vsharp_threshold,
            tkd_threshold=ns.tkd_threshold,
            inversions=tuple(dict.fromkeys(ns.inversion)),
            multi_solver=ns.multi_solver,
            sti_regularization=ns.sti_regularization,
            registration=ns.registration,
            model=absolute(ns.model),
            command_line=command_line,
            **{name: getattr(ns, name) for name in _TRAINING if hasattr(ns, name)},
        )

    def options(self) -> PipelineOptions:
        """The processing options of this run (validated)."""
        return PipelineOptions.from_settings(self)

    def nipype_plugin(self) -> tuple[str, dict[str, Any]]:
        """Nipype ``(plugin, plugin_args)``; MultiProc gets ``n_procs``/``memory_gb``.

        Arguments from ``--use-plugin`` take precedence over ``--nprocs``/``--mem``.
        """
        args: dict[str, Any] = {}
        if self.plugin in ('MultiProc', 'LegacyMultiProc'):
            args['n_procs'] = self.nprocs
            if self.mem_gb is not None:
                args['memory_gb'] = self.mem_gb
            args['raise_insufficient'] = False
        args.update(self.plugin_args)
        return self.plugin, args

    # ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/TOML-compatible values (paths as strings, tuples as lists, no ``None``)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = json.loads(json.dumps(value, default=str))
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f'unknown settings: {", ".join(sorted(unknown))}')
        kw = dict(data)
        for key in _PATHS:
            if kw.get(key) is not None:
                kw[key] = Path(kw[key])
        for key in _TUPLES:
            if kw.get(key) is not None:
                kw[key] = tuple(kw[key])
        return cls(**kw)

    def to_toml(self) -> str:
        """TOML text of :meth:`to_dict` (scalars and lists; ``plugin_args`` as a table)."""
        data = self.to_dict()
        tables = {k: v for k, v in data.items() if isinstance(v, dict)}
        lines = ['# qsmprep settings', '[settings]']
        lines += [f'{k} = {_toml_value(v)}' for k, v in data.items() if k not in tables]
        for name, table in tables.items():
            lines.append(f'\n[settings.{name}]')
            lines += [f'{json.dumps(str(k))} = {_toml_value(v)}' for k, v in table.items()
                      if v is not None]
        return '\n'.join(lines) + '\n'

    @classmethod
    def from_toml(cls, text: str) -> Settings:
        return cls.from_dict(tomllib.loads(text)['settings'])

    def write_toml(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_toml())
        return path


def read_config_file(path) -> tuple[dict[str, Any], list[tuple[int, str]]]:
    """Read a ``--config-file``: the ``[settings]`` table of a run's ``qsmprep_<uuid>.toml``,
    or the same keys at the top level of a TOML file.

    Returns the options it sets (relative paths made absolute against the file's folder) and
    notes to log, as ``(level, message)``: the per-run keys (:data:`PER_RUN`) are dropped
    with an INFO note (a WARNING when the file was written by another qsmprep version).
    The values are checked by the command line (:func:`qsmprep.cli.parser.parse_command_line`).

    Raises :class:`MissingInputError` (66) when the file is absent, :class:`UsageError` (64)
    when it is not TOML or has keys that are not settings.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / 'run.toml').write_text('mask_erosion = 3\\nderivatives = "masks"\\n')
    >>> values, notes = read_config_file(folder / 'run.toml')
    >>> values['mask_erosion'], values['derivatives'] == folder / 'masks', notes
    (3, True, [])
    """
    import logging

    path = Path(path)
    hint = ('write the keys of the [settings] table of a qsmprep_<run_uuid>.toml settings file '
            '(e.g. mask_erosion = 3), one per line')
    if not path.is_file():
        raise MissingInputError('configuration file (--config-file) does not exist', path=path,
                                hint='pass a TOML file, e.g. the qsmprep_<run_uuid>.toml '
                                     'settings file of an earlier run (sub-<label>/log/)')
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f'cannot parse configuration file ({exc})', path=path,
                         hint=hint) from None
    if isinstance(data.get('settings'), dict):
        extra = sorted(set(data) - {'settings'})
        if extra:
            raise UsageError(f'configuration file has keys outside its [settings] table: '
                             f'{", ".join(extra)}', path=path,
                             hint='put every key in the [settings] table, or none')
        data = data['settings']
    names = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(data) - names)
    if unknown:
        known = sorted(names - set(PER_RUN))
        close = {k: difflib.get_close_matches(k, known, n=1) for k in unknown}
        guesses = [f'{k} -> {c[0]}' for k, c in close.items() if c]
        raise UsageError(
            f'unknown setting(s) in the configuration file: {", ".join(unknown)}'
            + (f' (did you mean {", ".join(guesses)}?)' if guesses else ''), path=path,
            hint='use the names of the [settings] table of qsmprep_<run_uuid>.toml (the '
                 'options of qsmprep --help with "_" for "-", e.g. mask_erosion); known: '
                 + ', '.join(known))
    notes: list[tuple[int, str]] = []
    ignored = [k for k in PER_RUN if k in data]
    if ignored:
        notes.append((logging.INFO, f'{path}: ignoring the per-run setting(s) '
                      f'{", ".join(ignored)} (positional arguments, run UUID, date and '
                      'version are those of this run)'))
    version = data.get('version')
    if version is not None and version != __version__:
        notes.append((logging.WARNING, f'{path} was written by qsmprep {version}; this is '
                      f'qsmprep {__version__}: defaults and results may differ'))
    values = {k: v for k, v in data.items() if k not in PER_RUN}
    for key in _FILE_PATHS:
        value = values.get(key)
        if isinstance(value, str):
            value = Path(value).expanduser()
            values[key] = value if value.is_absolute() else path.parent.absolute() / value
    return values, notes


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return 'true' if v else 'false'
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # JSON string escapes are valid TOML
    if isinstance(v, list | tuple):
        return '[' + ', '.join(_toml_value(x) for x in v) + ']'
    if isinstance(v, dict):
        return '{' + ', '.join(f'{json.dumps(str(k))} = {_toml_value(x)}'
                               for k, x in v.items() if x is not None) + '}'
    return json.dumps(str(v))
