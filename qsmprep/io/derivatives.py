"""The derivatives contract: every file qsmprep writes, in one table.

The participant workflow's sinks write from this table (:mod:`qsmprep.workflows.base`), the
report and the evaluation read from it (:mod:`qsmprep.reports`), the learning level finds
its training pairs through it (:mod:`qsmprep.dl.data`), and the table of
``docs/outputs.md`` is generated from it (``python -m qsmprep.io.derivatives --write-docs``;
a test checks the page is up to date).

Each :class:`Output` gives the file name template, the static sidecar metadata (``Units``,
``Description``, ``Type``), when the file is written, and its *direct inputs* — the tokens
the ``Sources`` of its sidecar are made of (:func:`sources`).  Templates use these fields:

``ori``
    the entity prefix of one orientation, e.g. ``sub-01_ses-a_acq-ori02``;
``sub``
    the subject (and session) prefix, e.g. ``sub-01_ses-a``;
``ref``
    the space label of the reference orientation, e.g. ``ori01``;
``space``
    the space label of a moving orientation (transforms);
``method``
    the single-orientation inversion (``tkd``, ``ilsqr``, or a model's name).

>>> name('local_field', ori='sub-01_acq-ori02')
'sub-01_acq-ori02_desc-local_field.nii.gz'
>>> name('chimap', ori='sub-01_acq-ori02', method='ilsqr')
'sub-01_acq-ori02_desc-ilsqr_Chimap.nii.gz'
>>> name('cosmos', sub='sub-01', ref='ori01')
'sub-01_space-ori01_desc-cosmos_Chimap.nii.gz'
>>> suffix('local_mask')
'_space-orig_desc-local_mask.nii.gz'
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = [
    'DESCRIPTIONS',
    'DESCRIPTIONS_SIDECAR',
    'OUTPUTS',
    'Output',
    'anat_dir',
    'descriptions_tsv',
    'markdown_table',
    'name',
    'orientation_path',
    'readme',
    'sources',
    'subject_path',
    'suffix',
]


@dataclasses.dataclass(frozen=True)
class Output:
    """One kind of output file.

    Attributes
    ----------
    key : str
        Short name used in code (``'local_field'``).
    template : str
        File name with ``{ori}``/``{sub}``/``{ref}``/``{space}``/``{method}`` fields.
    scope : {'orientation', 'reference', 'dataset'}
        Per orientation (its own grid), in the reference orientation's space, or at the
        dataset root / in the subject's ``log/`` (written by the run, not by a sink).
    meaning : str
        What the file holds (the docs' table).
    units : str
        ``'ppm'``, ``'binary'`` or ``'—'``.
    when : str
        When it is written.
    metadata : dict
        Static sidecar entries (``Units``, ``Description``, ``Type``, …).
    inputs : dict of str to tuple of str
        Direct inputs per variant (``'default'`` and, where they differ, ``'from_reference'``,
        ``'user'``, ``'single-step'``): tokens resolved by :func:`sources`.
    dtype : str or None
        Storage type of a NIfTI (``'uint8'`` for masks; ``None`` keeps float32).
    folder : str
        Sub-folder of the subject (``'anat'``) or ``''`` for the dataset root.
    """

    key: str
    template: str
    scope: str
    meaning: str
    units: str = '—'
    when: str = 'always'
    metadata: dict = dataclasses.field(default_factory=dict)
    inputs: dict = dataclasses.field(default_factory=dict)
    dtype: str | None = None
    folder: str = 'anat'

    @property
    def fields(self) -> set[str]:
        return {f for _, f, _, _ in string.Formatter().parse(self.template) if f}

    def variant_inputs(self, variant: str = 'default') -> tuple[str, ...]:
        return tuple(self.inputs.get(variant, self.inputs.get('default', ())))


_PPM = {'Units': 'ppm'}
_MULTI = ('all:field', 'all:field_mask', 'all:xfm')
_MULTI_SINGLE = ('all:total_field', 'all:brain_mask', 'all:xfm')

_TABLE = (
    Output('brain_mask', '{ori}_space-orig_desc-brain_mask.nii.gz', 'orientation',
           'brain mask of the first-echo magnitude (BET, Python BET, the reference mask '
           'carried over by the registration, or the user mask)', 'binary',
           metadata={'Type': 'Brain', 'Description': 'Brain mask on the orientation\'s own '
                     'grid'},
           inputs={'default': ('raw:magnitude',),
                   'from_reference': ('raw:magnitude', 'reference:brain_mask', 'xfm'),
                   'user': ('user_mask',)},
           dtype='uint8'),
    Output('local_mask', '{ori}_space-orig_desc-local_mask.nii.gz', 'orientation',
           'final mask of the background removal (`--bgremoval`): brain mask eroded by '
           '`--mask-erosion` voxels, then by the smallest SMV radius (V-SHARP), by the SMV '
           'radius (iSMV, RESHARP), by one voxel (LBV) or not at all (PDF)', 'binary',
           metadata={'Type': 'ROI'}, inputs={'default': ('brain_mask',)}, dtype='uint8'),
    Output('total_field', '{ori}_desc-total_field.nii.gz', 'orientation',
           'echo-combined, unwrapped field shift (background included)', 'ppm',
           metadata=_PPM, inputs={'default': ('raw:echoes',)}),
    Output('local_field', '{ori}_desc-local_field.nii.gz', 'orientation',
           'local field after background removal (`--bgremoval`, V-SHARP by default; the '
           'sidecar\'s `EstimationAlgorithm` names the method and its settings; the network '
           'input of the learning level)', 'ppm', metadata=_PPM,
           inputs={'default': ('total_field', 'brain_mask')}),
    Output('chimap', '{ori}_desc-{method}_Chimap.nii.gz', 'orientation',
           'single-orientation susceptibility: `tkd` (truncated k-space division, demeaned '
           'in the local mask), `ilsqr` (the classical baseline: masked gradient-regularised '
           'least squares, λ 0.01 on ‖∇χ‖², CGLS stopped at a relative normal-equation '
           'residual of 1e-3 or 100 iterations; 0 outside the local mask, not demeaned) or '
           'the name of a `--model`; the sidecar\'s `EstimationAlgorithm` lists the '
           'parameters', 'ppm',
           when='one per `--inversion` method (default `tkd ilsqr`), and with `--model`',
           metadata={**_PPM, 'Description': 'Single-orientation susceptibility from the '
                     'local field'},
           inputs={'default': ('local_field', 'local_mask')}),
    Output('apparent', '{ori}_desc-apparent_Chimap.nii.gz', 'orientation',
           'apparent susceptibility b̂ᵢᵀχb̂ᵢ of the STI tensor along this orientation\'s B0, '
           'on its own grid (the training label of the learning level)', 'ppm',
           when='≥ 6 orientations',
           metadata={**_PPM, 'Description': 'Training label: STI tensor seen along this '
                     'orientation\'s B0, on its native grid'},
           inputs={'default': ('sti_tensor', 'common_mask', 'xfm', 'local_mask')}),
    Output('xfm', '{sub}_from-{space}_to-{ref}_mode-image_xfm.txt', 'orientation',
           'rigid transform of the orientation onto the reference (ITK text format; maps '
           'reference points to this orientation, as ITK/ANTs)', when='≥ 2 orientations, '
           'not the reference', inputs={'default': ('raw:magnitude', 'raw:reference_magnitude',
                                                    'reference:brain_mask')}),
    Output('common_mask', '{sub}_space-{ref}_desc-common_mask.nii.gz', 'reference',
           'voxels inside every registered local mask (with `--multi-solver single-step`: '
           'every registered eroded brain mask)', 'binary', when='≥ 2 orientations',
           metadata={'Type': 'ROI'},
           inputs={'default': ('all:field_mask', 'all:xfm'),
                   'single-step': ('all:brain_mask', 'all:xfm')}, dtype='uint8'),
    Output('cosmos', '{sub}_space-{ref}_desc-cosmos_Chimap.nii.gz', 'reference',
           'COSMOS susceptibility (scalar model)', 'ppm', when='≥ 2 orientations',
           metadata={**_PPM, 'Description': 'COSMOS susceptibility (isotropic model) from '
                     'all orientations'},
           inputs={'default': _MULTI, 'single-step': _MULTI_SINGLE}),
    Output('orientations', '{sub}_space-{ref}_desc-orientations_qsmprep.json', 'reference',
           'B0 directions in the reference voxel frame, condition number, warnings',
           when='≥ 2 orientations', inputs={'default': _MULTI}),
    Output('chi33', '{sub}_space-{ref}_desc-chi33_Chimap.nii.gz', 'reference',
           'STI χ33: b̂_refᵀχb̂_ref along the reference B0', 'ppm', when='≥ 6 orientations',
           metadata={**_PPM, 'Description': 'chi33: susceptibility along the reference B0'},
           inputs={'default': _MULTI, 'single-step': _MULTI_SINGLE}),
    Output('mms', '{sub}_space-{ref}_desc-mms_Chimap.nii.gz', 'reference',
           'mean magnetic susceptibility tr(χ)/3', 'ppm', when='≥ 6 orientations',
           metadata={**_PPM, 'Description': 'mean magnetic susceptibility tr(chi)/3'},
           inputs={'default': _MULTI, 'single-step': _MULTI_SINGLE}),
    Output('msa', '{sub}_space-{ref}_desc-msa_Chimap.nii.gz', 'reference',
           'magnetic susceptibility anisotropy λ1 − (λ2 + λ3)/2', 'ppm',
           when='≥ 6 orientations',
           metadata={**_PPM, 'Description': 'magnetic susceptibility anisotropy '
                     'l1-(l2+l3)/2'},
           inputs={'default': _MULTI, 'single-step': _MULTI_SINGLE}),
    Output('sti_tensor', '{sub}_space-{ref}_desc-sti_tensor.nii.gz', 'reference',
           'susceptibility tensor, 4-D, components `[χ11, χ12, χ13, χ22, χ23, χ33]` '
           '(reference voxel frame)', 'ppm', when='≥ 6 orientations',
           metadata={**_PPM, 'Description': 'Susceptibility tensor (STI), reference voxel '
                     'frame', 'TensorComponents': ['chi11', 'chi12', 'chi13', 'chi22',
                                                   'chi23', 'chi33']},
           inputs={'default': _MULTI, 'single-step': _MULTI_SINGLE}),
    Output('pev', '{sub}_space-{ref}_desc-pev_vector.nii.gz', 'reference',
           'principal eigenvector of the tensor (unit, 3 components, reference voxel frame)',
           when='≥ 6 orientations',
           metadata={'Units': 'arbitrary', 'Description': 'principal eigenvector of the '
                     'susceptibility tensor (unit)'},
           inputs={'default': ('sti_tensor',)}),
    Output('report', '{sub}.html', 'dataset',
           'report: inputs, masks, fields before/after background removal, registration '
           'check, orientation sphere and condition number, χ maps', folder=''),
    Output('settings', 'sub-X/log/qsmprep_<uuid>.toml', 'dataset',
           'the settings of the run', folder=''),
    Output('log', 'sub-X/log/qsmprep_<uuid>.log', 'dataset',
           'the run\'s log: Nipype\'s records (every node\'s set-up, execution, timing) and '
           'qsmprep\'s INFO messages; written to `<work_dir>/logs/` during the run (see '
           '{doc}`usage`)', folder=''),
    Output('file_list', 'sub-X/log/qsmprep_<uuid>_files.txt', 'dataset',
           'the files of the subject this run wrote (a re-run keeps every other file)',
           folder=''),
    Output('citation', 'logs/CITATION.md', 'dataset',
           'methods boilerplate with references for the options used', folder=''),
    Output('descriptions', 'descriptions.tsv', 'dataset',
           'the meaning of every `desc-` label in the dataset (BIDS ≥ 1.10; columns in '
           '`descriptions.json`)', folder=''),
    Output('readme', 'README.md', 'dataset',
           'what the dataset holds and where to look (written when absent; a README of '
           'your own is kept)', folder=''),
    Output('dataset_description', 'dataset_description.json', 'dataset',
           'derivative dataset description (`GeneratedBy` with `Container` when run in the '
           'image, `SourceDatasets`, `DatasetLinks`), and `.bidsignore`', folder=''),
)

#: Every output by key, in the order of the docs' table.
OUTPUTS: dict[str, Output] = {o.key: o for o in _TABLE}

#: Keys of the files written by the participant workflow's sinks.
SINK_KEYS = tuple(o.key for o in _TABLE if o.scope != 'dataset')


def name(key: str, **fields) -> str:
    """The file name of output ``key`` with the template's fields filled in."""
    out = OUTPUTS[key]
    missing = out.fields - set(fields)
    if missing:
        raise TypeError(f'{key}: missing field(s) {", ".join(sorted(missing))}')
    return out.template.format(**fields)


def suffix(key: str, **fields) -> str:
    """The part of the name after the orientation prefix (``{ori}`` left empty)."""
    return name(key, ori='', **fields)


def anat_dir(subject) -> str:
    """``sub-XX[/ses-YY]/anat`` of a :class:`~qsmprep.io.datamodel.SubjectData`."""
    d = f'sub-{subject.subject}'
    if getattr(subject, 'session', None):
        d += f'/ses-{subject.session}'
    return d + '/anat'


def orientation_path(root, subject, ori, key: str, **fields) -> Path:
    """Path of a per-orientation output of ``ori`` under the dataset ``root``."""
    ref = subject.reference_orientation.space_label
    return Path(root) / anat_dir(subject) / name(
        key, **_fill(key, ori=ori.prefix, sub=subject.prefix, ref=ref,
                     space=ori.space_label, **fields))


def subject_path(root, subject, key: str, **fields) -> Path:
    """Path of a reference-space output of ``subject`` under the dataset ``root``."""
    ref = subject.reference_orientation.space_label
    return Path(root) / anat_dir(subject) / name(
        key, **_fill(key, sub=subject.prefix, ref=ref, **fields))


def _fill(key, **fields):
    return {k: v for k, v in fields.items() if k in OUTPUTS[key].fields}


def dataset_uri(subject, ori, key: str, **fields) -> str:
    """``bids::`` URI (this derivatives dataset) of an output."""
    if ori is not None:
        rel = orientation_path('', subject, ori, key, **fields)
    else:
        rel = subject_path('', subject, key, **fields)
    return 'bids::' + Path(rel).as_posix()


def sources(key: str, subject, ori=None, *, raw_uri: Callable[[Path], str],
            variant: str = 'default', user_mask_uri: str | None = None,
            field: str = 'local_field', field_mask: str = 'local_mask') -> list[str]:
    """``Sources`` of output ``key``: the BIDS URIs of its direct inputs.

    ``raw_uri`` maps a raw dataset file to its ``bids:raw:`` URI; ``field``/``field_mask``
    name the per-orientation inputs of the multi-orientation solver (the local field and
    mask by default).  The reference orientation has no transform: ``xfm`` tokens of it are
    left out.
    """
    ref = subject.reference_orientation
    several = len(subject.orientations) >= 2
    out: list[str] = []

    def per(o, k):
        if k == 'xfm' and (o is ref or not several):
            return []
        return [dataset_uri(subject, o, k)]

    for token in OUTPUTS[key].variant_inputs(variant):
        if token == 'raw:echoes':
            out += [raw_uri(f) for e in ori.echoes for f in (e.magnitude, e.phase)]
        elif token == 'raw:magnitude':
            out.append(raw_uri(ori.echoes[0].magnitude))
        elif token == 'raw:reference_magnitude':
            out.append(raw_uri(ref.echoes[0].magnitude))
        elif token == 'user_mask':
            if user_mask_uri:
                out.append(user_mask_uri)
        elif token.startswith('reference:'):
            out += per(ref, token.split(':', 1)[1])
        elif token.startswith('all:'):
            k = token.split(':', 1)[1]
            k = {'field': field, 'field_mask': field_mask}.get(k, k)
            for o in subject.orientations:
                out += per(o, k)
        elif OUTPUTS[token].scope == 'orientation':
            out += per(ori, token)
        else:
            out.append(dataset_uri(subject, None, token))
    return list(dict.fromkeys(out))


#: ``desc-`` labels of the outputs and what they mean (``descriptions.tsv``, BIDS ≥ 1.10).
DESCRIPTIONS = {
    'brain': 'brain mask of the first-echo magnitude',
    'local': 'local field (background removed) and its support mask',
    'total': 'echo-combined unwrapped field, background included',
    'tkd': 'single-orientation susceptibility by truncated k-space division',
    'ilsqr': 'single-orientation susceptibility by masked gradient-regularised least squares',
    'apparent': 'apparent susceptibility b^T chi b of the STI tensor along the orientation\'s B0',
    'common': 'voxels inside every registered orientation mask',
    'cosmos': 'COSMOS susceptibility (isotropic model, all orientations)',
    'orientations': 'B0 directions, condition number and warnings of the orientation set',
    'chi33': 'STI chi33, susceptibility along the reference B0',
    'mms': 'STI mean magnetic susceptibility',
    'msa': 'STI magnetic susceptibility anisotropy',
    'sti': 'susceptibility tensor (STI)',
    'pev': 'principal eigenvector of the susceptibility tensor',
}


def descriptions_tsv(models: Iterable[str] = ()) -> str:
    """``descriptions.tsv`` of the dataset root: every ``desc-`` label qsmprep writes (and
    the ``desc-<model>`` labels of ``--model`` maps).

    >>> descriptions_tsv(['modl']).splitlines()[0].split()
    ['desc_id', 'description']
    """
    rows = dict(DESCRIPTIONS)
    for m in models:
        rows.setdefault(m, f'single-orientation susceptibility predicted by the '
                           f'deep-learning model {m}')
    return 'desc_id\tdescription\n' + ''.join(f'desc-{k}\t{v}\n' for k, v in rows.items())


#: ``descriptions.json``: the columns of ``descriptions.tsv``.
DESCRIPTIONS_SIDECAR = {
    'Description': 'The desc- labels of the qsmprep derivatives and their meaning',
    'desc_id': {'Description': 'a desc-<label> entity used in this derivatives dataset'},
    'description': {'Description': 'what files with this desc- label hold'},
}


def readme(version: str) -> str:
    """``README.md`` of the derivatives dataset (BIDS recommends one)."""
    return (f'# qsmprep derivatives\n\nQuantitative susceptibility maps written by qsmprep '
            f'{version}: per head orientation brain masks, total and local fields (ppm) and '
            'single-orientation susceptibility maps; across orientations COSMOS and the '
            'susceptibility tensor (STI: chi33, mean magnetic susceptibility, anisotropy, '
            'principal eigenvector) in the reference orientation\'s space, and '
            'per-orientation apparent-susceptibility training labels.\n\n'
            '- `descriptions.tsv`: what each `desc-` label means;\n'
            '- `logs/CITATION.md`: the methods used, with references;\n'
            '- `sub-<label>.html`: the report of each subject;\n'
            '- `sub-<label>/log/`: the settings, log and file list of every run.\n\n'
            'Every sidecar lists its direct inputs in `Sources` (BIDS URIs; `DatasetLinks` in '
            '`dataset_description.json` resolves them).  Fields, the tensor, the eigenvector '
            'and transforms have no BIDS suffix yet and are listed in `.bidsignore`.\n')


# ---------------------------------------------------------------------------------------------
def _display(template: str) -> str:
    return (template.replace('{ori}', 'sub-X_<ori>').replace('{sub}', 'sub-X')
            .replace('{ref}', '<ref>').replace('{space}', '<ori>')
            .replace('{method}', '<method>'))


_TOKEN_TEXT = {
    'raw:echoes': 'raw magnitude + phase of every echo',
    'raw:magnitude': 'raw first-echo magnitude',
    'raw:reference_magnitude': 'raw first-echo magnitude of the reference',
    'user_mask': 'user mask (`--derivatives`)',
}


def _inputs_text(out: Output) -> str:
    parts = []
    for variant, tokens in out.inputs.items():
        words = []
        for t in tokens:
            if t in _TOKEN_TEXT:
                words.append(_TOKEN_TEXT[t])
            elif t.startswith('reference:'):
                words.append(f'`{t.split(":")[1]}` of the reference')
            elif t.startswith('all:'):
                k = t.split(':')[1]
                k = {'field': 'local_field', 'field_mask': 'local_mask'}.get(k, k)
                words.append(f'every `{k}`')
            else:
                words.append(f'`{t}`')
        text = ', '.join(words)
        parts.append(text if variant == 'default' else f'*{variant}*: {text}')
    return '; '.join(parts) or '—'


def markdown_table(keys: Iterable[str] | None = None) -> str:
    """The outputs table of ``docs/outputs.md``."""
    rows = ['| File | Meaning | Units | When | Sources (direct inputs) |',
            '|---|---|---|---|---|']
    for key in keys or OUTPUTS:
        o = OUTPUTS[key]
        where = '' if o.folder else ' (dataset root)' if not o.template.startswith(
            'sub-X/') else ''
        rows.append(f'| `{_display(o.template)}`{where} | {o.meaning} | {o.units} | {o.when} '
                    f'| {_inputs_text(o) if o.scope != "dataset" else "—"} |')
    return '\n'.join(rows) + '\n'


BEGIN, END = '<!-- outputs-table:begin -->', '<!-- outputs-table:end -->'


def render_docs(text: str) -> str:
    """``docs/outputs.md`` text with the table between the markers regenerated."""
    pattern = re.compile(re.escape(BEGIN) + r'.*?' + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f'markers {BEGIN} … {END} not found')
    return pattern.sub(lambda _: f'{BEGIN}\n{markdown_table()}{END}', text)


def main(argv=None) -> int:  # pragma: no cover - thin CLI
    import argparse

    p = argparse.ArgumentParser(description='Print or write the derivatives table.')
    p.add_argument('--write-docs', type=Path, metavar='OUTPUTS_MD')
    a = p.parse_args(argv)
    if a.write_docs:
        a.write_docs.write_text(render_docs(a.write_docs.read_text()))
    else:
        print(markdown_table(), end='')
    return 0


if __name__ == '__main__':  # pragma: no cover
    raise SystemExit(main())
