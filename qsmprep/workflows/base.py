"""Top-level participant workflow: every orientation of a subject → STI/COSMOS derivatives."""

from __future__ import annotations

import os
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from qsmprep import __version__
from qsmprep.interfaces.bids import DerivativesSink
from qsmprep.interfaces.qsm import ApparentSusceptibility, MultiOrientation, inversion_description
from qsmprep.interfaces.registration import MaskFromReference, ResampleToReference
from qsmprep.io import derivatives as contract
from qsmprep.options import PipelineOptions
from qsmprep.workflows.orientation import bgremoval_description, init_orientation_wf
from qsmprep.workflows.registration import init_registration_wf

#: Minimum numbers of orientations for the multi-orientation methods.
MIN_COSMOS, MIN_STI = 2, 6


def _safe(label: str) -> str:
    return ''.join(c if c.isalnum() else '_' for c in label)


def _raw_uri(bids_dir, path) -> str:
    """``bids:raw:`` URI of a dataset file, by its name inside ``bids_dir``.

    Symbolic links are not followed: in DataLad/git-annex clones the files are links into an
    object store (``.git/annex/objects`` or elsewhere), and ``Sources`` must name the dataset
    path, not the store.  Only the folders are resolved, for a ``bids_dir`` given through a
    link or a relative path.

    >>> _raw_uri('/data/ds', '/data/ds/sub-01/anat/x.nii.gz')
    'bids:raw:sub-01/anat/x.nii.gz'
    """
    path, root = Path(os.path.abspath(path)), Path(os.path.abspath(bids_dir))
    try:
        rel = path.relative_to(root)
    except ValueError:  # bids_dir and the file reached through different links
        rel = (path.parent.resolve() / path.name).relative_to(root.resolve())
    return 'bids:raw:' + rel.as_posix()


def _multi_mem_gb(ref, n) -> float:
    """Memory estimate (GB) of the multi-orientation node: fields + solver work arrays."""
    import nibabel as nb

    try:
        shape = nb.load(str(ref.echoes[0].magnitude)).shape[:3]
    except Exception:
        return 1.0
    vox = float(shape[0] * shape[1] * shape[2]) * 1.6  # padding
    return round(max(1.0, vox * 4 * (n + 40) / 1e9), 1)


def _echo_combination(opts, ori) -> str:
    """``--echo-combination`` of one orientation: ``'auto'`` is a linear fit against TE with
    several echoes, the plain field of a single echo otherwise."""
    if opts.echo_combination != 'auto':
        return opts.echo_combination
    return 'linear-fit' if ori.n_echoes >= 2 else 'average'


class _Provenance:
    """BIDS URIs of a subject's inputs and outputs (``Sources``, ``SpatialReference``).

    ``links`` names the datasets outputs may come from (``DatasetLinks`` of
    ``dataset_description.json``): ``raw`` (the input dataset) and, with ``--derivatives``,
    ``masks`` (the folder of user masks).
    """

    def __init__(self, subject, bids_dir, links=None):
        self.subject = subject
        self.links = {'raw': bids_dir, **{k: v for k, v in (links or {}).items() if v}}

    def raw(self, path) -> str:
        return _raw_uri(self.links['raw'], path)

    def file(self, path) -> str:
        """URI of a file in a linked dataset (its ``bids:<name>:`` form); a dataset nested
        in another (masks under ``bids_dir/derivatives``) is named by the innermost link."""
        for key, root in reversed(self.links.items()):
            try:
                return _raw_uri(root, path).replace('bids:raw:', f'bids:{key}:', 1)
            except ValueError:
                continue
        return Path(os.path.abspath(path)).as_uri()

    def sources(self, key, ori=None, variant='default', multi_solver='closed-form'):
        single = multi_solver == 'single-step'
        return contract.sources(
            key, self.subject, ori, raw_uri=self.raw, variant=variant,
            user_mask_uri=self.file(ori.user_mask) if ori is not None and ori.user_mask
            else None,
            field='total_field' if single else 'local_field',
            field_mask='brain_mask' if single else 'local_mask')


def _sink(wf, key, path, meta, src, field, *, name):
    """A :class:`DerivativesSink` of output ``key`` (storage type from the contract)."""
    out = contract.OUTPUTS[key]
    node = pe.Node(DerivativesSink(out_path=str(path), dtype=out.dtype,
                                   metadata={**out.metadata, **(meta or {})}
                                   if meta is not None else {}),
                   name=name, overwrite=True, run_without_submitting=True)
    wf.connect(src, field, node, 'in_file')
    return node


def init_orientation_derivatives_wf(subject, ori, *, output_dir, prov, options, model=None,
                                    with_xfm=False, with_apparent=False, apparent_text='',
                                    mask_variant='default', name=None):
    """Sinks of one orientation's outputs on its own grid (the contract's ``orientation``
    scope): brain and local masks, total and local fields, one χ map per inversion (and the
    ``--model`` map), the transform to the reference, the apparent-susceptibility label.

    Inputs (``inputnode``): ``brain_mask``, ``local_mask``, ``total_field``, ``local_field``,
    ``chimap_<method>`` per inversion, ``chimap_model``, ``xfm``, ``apparent``.
    """
    from qsmprep.io.derivatives import orientation_path

    opts = options
    methods = list(opts.inversions)
    fields = ['brain_mask', 'local_mask', 'total_field', 'local_field',
              *[f'chimap_{m}' for m in methods], 'chimap_model', 'xfm', 'apparent']
    wf = pe.Workflow(name=name or f'ds_{_safe(ori.label)}_wf')
    wf.__desc__ = (f'Outputs of orientation {ori.label} were written on its own grid '
                   '(BIDS derivatives).')
    inputnode = pe.Node(niu.IdentityInterface(fields), name='inputnode')
    common = {'MagneticFieldStrength': ori.field_strength, 'SkullStripped': True}
    acq = {**common, 'EchoTime': list(ori.echo_times), 'B0_dir': list(ori.b0_direction)}
    native = prov.raw(ori.echoes[0].magnitude)
    bg_text = bgremoval_description(opts.bgremoval, vsharp_radii=opts.vsharp_radii,
                                    vsharp_threshold=opts.vsharp_threshold)
    bg_name = bg_text.split(' (')[0]
    combination = _echo_combination(opts, ori)

    def path(key, **kw):
        return orientation_path(output_dir, subject, ori, key, **kw)

    def src(key, variant='default'):
        return {'Sources': prov.sources(key, ori, variant)}

    _sink(wf, 'brain_mask', path('brain_mask'),
          {**src('brain_mask', mask_variant), 'SpatialReference': native,
           'Description': {'default': 'Brain mask of the first-echo magnitude',
                           'from_reference': 'Brain mask of the reference orientation '
                           'carried onto this grid by the registration',
                           'user': 'User-supplied brain mask'}[mask_variant]},
          inputnode, 'brain_mask', name='ds_brainmask')
    _sink(wf, 'local_mask', path('local_mask'),
          {**src('local_mask'), 'SpatialReference': native,
           'Description': f'{bg_name} final mask (local field support)'},
          inputnode, 'local_mask', name='ds_localmask')
    _sink(wf, 'total_field', path('total_field'),
          {**acq, **src('total_field'),
           'Description': f'Echo-combined, unwrapped field ({combination}), background '
                          'included', 'EstimationAlgorithm': f'Laplacian unwrapping '
                          f'({opts.unwrapping}), echo combination {combination}'},
          inputnode, 'total_field', name='ds_totalfield')
    _sink(wf, 'local_field', path('local_field'),
          {**acq, **src('local_field'), 'Description': f'Local field after {bg_name}',
           'EstimationAlgorithm': bg_text},
          inputnode, 'local_field', name='ds_localfield')
    for m in methods:
        _sink(wf, 'chimap', path('chimap', method=m),
              {**acq, **src('chimap'), 'EstimationAlgorithm': inversion_description(
                  m, tkd_threshold=opts.tkd_threshold)},
              inputnode, f'chimap_{m}', name=f'ds_chimap_{m}')
    if model:
        from qsmprep.interfaces.dl import model_description

        dl_desc, dl_text = model_description(model)
        _sink(wf, 'chimap', path('chimap', method=dl_desc),
              {**acq, **src('chimap'), 'EstimationAlgorithm': dl_text,
               'Description': f'Single-orientation susceptibility predicted by the '
                              f'deep-learning model {dl_desc} from the local field'},
              inputnode, 'chimap_model', name=f'ds_chimap_{dl_desc}')
    if with_xfm:
        _sink(wf, 'xfm', path('xfm'), None, inputnode, 'xfm', name='ds_xfm')
    if with_apparent:
        _sink(wf, 'apparent', path('apparent'),
              {**common, **src('apparent'), 'B0_dir': list(ori.b0_direction),
               'EstimationAlgorithm': f'{apparent_text}; apparent susceptibility b^T chi b'},
              inputnode, 'apparent', name='ds_apparent')
    return wf


def init_to_reference_wf(ori, ref, *, multi_solver='closed-form', name=None):
    """Resample one orientation's field and mask into the reference grid and rotate its B0
    into the reference voxel frame (:class:`ResampleToReference`).

    Inputs: ``xfm`` (world transform, this orientation → reference), ``local_field``,
    ``local_mask``, and for ``multi_solver='single-step'`` ``total_field``,
    ``eroded_mask``.  Outputs: ``field``, ``mask``, ``b0_direction`` and (single-step)
    ``total_field``, ``total_mask``.
    """
    wf = pe.Workflow(name=name or f'to_reference_{_safe(ori.label)}_wf')
    wf.__desc__ = (f'The local field of orientation {ori.label} was resampled into the '
                   'reference grid and its B0 direction rotated into the reference frame.')
    inputnode = pe.Node(niu.IdentityInterface(
        ['xfm', 'local_field', 'local_mask', 'total_field', 'eroded_mask']), name='inputnode')
    outputnode = pe.Node(niu.IdentityInterface(
        ['field', 'mask', 'b0_direction', 'total_field', 'total_mask']), name='outputnode')
    rs = pe.Node(ResampleToReference(b0_direction=list(ori.b0_direction),
                                     reference=str(ref.echoes[0].magnitude)),
                 name='to_reference')
    wf.connect([
        (inputnode, rs, [('xfm', 'in_xfm'), ('local_field', 'in_file'),
                         ('local_mask', 'in_mask')]),
        (rs, outputnode, [('out_file', 'field'), ('out_mask', 'mask'),
                          ('b0_direction', 'b0_direction')]),
    ])  # fmt: skip
    if multi_solver == 'single-step':  # the single-step solver fits the total fields
        rs_total = pe.Node(ResampleToReference(b0_direction=list(ori.b0_direction),
                                               reference=str(ref.echoes[0].magnitude)),
                           name='to_reference_total')
        wf.connect([
            (inputnode, rs_total, [('xfm', 'in_xfm'), ('total_field', 'in_file'),
                                   ('eroded_mask', 'in_mask')]),
            (rs_total, outputnode, [('out_file', 'total_field'), ('out_mask', 'total_mask')]),
        ])  # fmt: skip
    return wf


def multi_orientation_text(n, *, multi_solver='closed-form', sti_regularization=None):
    """``EstimationAlgorithm`` texts of COSMOS and STI."""
    single = multi_solver == 'single-step'
    how = ('single-step: fitted to the total fields through a multi-radius SMV data term, '
           'no separate background removal' if single else
           'closed form on the background-removed local fields')
    weight = sti_regularization if sti_regularization is not None else (
        0.1 if single else 0.3)
    return (f'COSMOS ({how}, {n} orientations)',
            f'STI ({how}, {n} orientations, anisotropy penalty {weight})')


def init_multi_orientation_wf(subject, *, output_dir, prov, options,
                              name='multi_orientation_wf'):
    """COSMOS (≥ 2 orientations) and STI (≥ 6) on the registered fields, and their sinks
    (the contract's ``reference`` scope).

    Inputs: ``field<i>``, ``mask<i>``, ``b0<i>`` (and ``total_field<i>``,
    ``total_mask<i>`` for the single-step solver), ``i = 1 … n`` in the subject's
    orientation order.  Outputs: ``tensor``, ``common_mask`` (with ≥ 6 orientations).
    """
    from qsmprep.io.derivatives import subject_path

    opts = options
    oris, ref = subject.orientations, subject.reference_orientation
    n = len(oris)
    single = opts.multi_solver == 'single-step'
    ports = ['field', 'mask', 'b0'] + (['total_field', 'total_mask'] if single else [])
    wf = pe.Workflow(name=name)
    cosmos_text, sti_text = multi_orientation_text(
        n, multi_solver=opts.multi_solver, sti_regularization=opts.sti_regularization)
    wf.__desc__ = (f'{cosmos_text.split(" (")[0]}' + (' and STI' if n >= MIN_STI else '')
                   + f' were computed from {n} orientations ({opts.multi_solver} solver).')
    inputnode = pe.Node(niu.IdentityInterface(
        [f'{p}{i + 1}' for p in ports for i in range(n)]), name='inputnode')
    outputnode = pe.Node(niu.IdentityInterface(['tensor', 'common_mask']), name='outputnode')
    merge = {p: pe.Node(niu.Merge(n), name={'field': 'merge_fields', 'mask': 'merge_masks',
                                            'b0': 'merge_b0'}.get(p, f'merge_{p}s'))
             for p in ports}
    for p, node in merge.items():
        wf.connect([(inputnode, node, [(f'{p}{i + 1}', f'in{i + 1}') for i in range(n)])])
    multi = pe.Node(MultiOrientation(reference_b0=list(ref.b0_direction),
                                     solver=opts.multi_solver),
                    name='multi_orientation', mem_gb=_multi_mem_gb(ref, n))
    if opts.sti_regularization is not None:
        multi.inputs.sti_regularization = float(opts.sti_regularization)
    wf.connect([
        (merge['field'], multi, [('out', 'in_files')]),
        (merge['mask'], multi, [('out', 'in_masks')]),
        (merge['b0'], multi, [('out', 'b0_directions')]),
        (multi, outputnode, [('tensor', 'tensor'), ('out_mask', 'common_mask')]),
    ])  # fmt: skip
    if single:
        wf.connect([
            (merge['total_field'], multi, [('out', 'in_total_files')]),
            (merge['total_mask'], multi, [('out', 'in_total_masks')]),
        ])  # fmt: skip
    common = {'MagneticFieldStrength': ref.field_strength, 'SkullStripped': True,
              'SpatialReference': prov.raw(ref.echoes[0].magnitude)}
    variant = 'single-step' if single else 'default'

    def meta(key, **extra):
        return {**common, 'Sources': prov.sources(key, variant=variant,
                                                  multi_solver=opts.multi_solver), **extra}

    def path(key):
        return subject_path(output_dir, subject, key)

    _sink(wf, 'common_mask', path('common_mask'),
          meta('common_mask', Description=(
              'Voxels inside every registered (eroded) brain mask: the support of the '
              'single-step COSMOS/STI' if single else
              'Voxels inside every registered local mask')),
          multi, 'out_mask', name='ds_common_mask')
    _sink(wf, 'cosmos', path('cosmos'), meta('cosmos', EstimationAlgorithm=cosmos_text),
          multi, 'cosmos', name='ds_cosmos')
    _sink(wf, 'orientations', path('orientations'), None, multi, 'out_report',
          name='ds_orientations')
    if n < MIN_STI:
        return wf
    for key in ('chi33', 'mms', 'msa', 'sti_tensor'):
        _sink(wf, key, path(key), meta(key, EstimationAlgorithm=sti_text), multi,
              'tensor' if key == 'sti_tensor' else key, name=f'ds_{key.split("_")[-1]}')
    _sink(wf, 'pev', path('pev'),
          {'SpatialReference': common['SpatialReference'], 'EstimationAlgorithm': sti_text,
           'Sources': prov.sources('pev')}, multi, 'pev', name='ds_pev')
    return wf


def init_single_subject_wf(subject, *, output_dir, bids_dir, options=None, dataset_links=None,
                           name=None, **overrides):
    """Process all orientations of one subject (and session).

    Parameters
    ----------
    subject : qsmprep.io.datamodel.SubjectData
        Validated inputs (orientations, echoes, B0 directions, reference orientation).
    output_dir : path
        Root of the derivatives tree the sink nodes write to (qsmprep stages outputs in the
        work directory and moves them into the real output directory only after the whole
        subject finished, so a failed run leaves nothing half-written there).
    bids_dir : path
        Raw dataset (for the ``Sources`` BIDS URIs).
    options : qsmprep.options.PipelineOptions, optional
        Processing options (default: the defaults, with the Python mask and SimpleITK
        registration when ``'auto'`` finds no FSL).  ``overrides`` replace single fields
        (``inversions=('ilsqr',)``).  ``options.model`` (``--model``): a trained
        deep-learning model folder; adds a χ map per orientation,
        ``desc-<model name>_Chimap`` (:class:`~qsmprep.interfaces.dl.PredictChimap`).
    dataset_links : dict, optional
        Other datasets inputs come from (``{'masks': derivatives_dir}``), for the
        ``bids:<name>:`` URIs of ``Sources``.

    The graph: one :func:`~qsmprep.workflows.orientation.init_orientation_wf` and one
    :func:`init_orientation_derivatives_wf` per orientation; with ≥ 2 orientations each
    first-echo magnitude is registered to the reference
    (:func:`~qsmprep.workflows.registration.init_registration_wf`), the reference brain
    mask is carried onto it, and :func:`init_to_reference_wf` resamples its local field and
    mask into the reference grid and rotates its B0 into the reference voxel frame;
    :func:`init_multi_orientation_wf` computes COSMOS (≥ 2) and STI (≥ 6), and with STI each
    orientation gets its apparent-susceptibility training label bᵢᵀχbᵢ on its own grid.
    """
    opts = (options if options is not None else PipelineOptions()).replace(**overrides)
    opts = opts.resolved()
    oris = subject.orientations
    ref = subject.reference_orientation
    n = len(oris)
    multi = n >= MIN_COSMOS
    single = opts.multi_solver == 'single-step'
    prov = _Provenance(subject, bids_dir, dataset_links)
    wf = pe.Workflow(name=name or f'single_subject_{_safe(subject.prefix)}_wf')
    wf.__desc__ = (f'Subject {subject.prefix}: {n} head orientation(s), reference '
                   f'{ref.label}.')
    ori_wfs, ds_wfs, reg_wfs = {}, {}, {}
    for ori in oris:
        tag = _safe(ori.label)
        # with several orientations, only the reference is skull-stripped; the others get
        # its mask through their registration (MaskFromReference below)
        mask_from_ref = multi and ori is not ref and not ori.user_mask
        combination = _echo_combination(opts, ori)
        owf = init_orientation_wf(
            echo_times=ori.echo_times, field_strength=ori.field_strength,
            b0_direction=ori.b0_direction, phase_units=ori.phase_units,
            phase_range=ori.phase_range,
            mask_method='user' if ori.user_mask or mask_from_ref else opts.mask_method,
            mask_erosion=opts.mask_erosion, mask_threshold=opts.mask_threshold,
            unwrapping=opts.unwrapping, echo_combination=combination,
            vsharp_radii=opts.vsharp_radii, vsharp_threshold=opts.vsharp_threshold,
            bgremoval=opts.bgremoval, tkd_threshold=opts.tkd_threshold,
            inversions=opts.inversions, name=f'orientation_{tag}_wf')
        owf.inputs.inputnode.magnitude_files = [str(e.magnitude) for e in ori.echoes]
        owf.inputs.inputnode.phase_files = [str(e.phase) for e in ori.echoes]
        if ori.user_mask:
            owf.inputs.inputnode.user_mask = str(ori.user_mask)
        _, sti_text = multi_orientation_text(n, multi_solver=opts.multi_solver,
                                             sti_regularization=opts.sti_regularization)
        dwf = init_orientation_derivatives_wf(
            subject, ori, output_dir=output_dir, prov=prov, options=opts, model=opts.model,
            with_xfm=multi and ori is not ref, with_apparent=n >= MIN_STI,
            apparent_text=sti_text,
            mask_variant='user' if ori.user_mask else
            'from_reference' if mask_from_ref else 'default')
        wf.connect([(owf, dwf, [(f'outputnode.{f}', f'inputnode.{f}') for f in (
            'brain_mask', 'local_mask', 'total_field', 'local_field',
            *[f'chimap_{m}' for m in opts.inversions])])])
        if opts.model:  # --- deep-learning inference (qsmprep.interfaces.dl; TF in the node)
            from qsmprep.interfaces.dl import PredictChimap

            predict = pe.Node(PredictChimap(model=str(opts.model), b0_direction=list(
                ori.b0_direction)), name=f'predict_{tag}')
            wf.connect([
                (owf, predict, [('outputnode.local_field', 'in_file'),
                                ('outputnode.local_mask', 'in_mask')]),
                (predict, dwf, [('out_file', 'inputnode.chimap_model')]),
            ])  # fmt: skip
        ori_wfs[ori.label], ds_wfs[ori.label] = owf, dwf
        if not multi:
            continue
        # registration reads the raw first-echo magnitudes directly, so that it does not
        # depend on the orientation workflow (whose brain mask may come from it)
        reg_wf = init_registration_wf(method=opts.registration, is_reference=ori is ref,
                                      name=f'registration_{tag}_wf')
        reg_wf.inputs.inputnode.moving = str(ori.echoes[0].magnitude)
        reg_wf.inputs.inputnode.fixed = str(ref.echoes[0].magnitude)
        reg_wfs[ori.label] = reg_wf
        if ori is not ref:
            wf.connect(reg_wf, 'outputnode.itk_xfm', dwf, 'inputnode.xfm')
    if not multi:
        return wf

    ref_wf = ori_wfs[ref.label]
    mwf = init_multi_orientation_wf(subject, output_dir=output_dir, prov=prov, options=opts)
    for i, ori in enumerate(oris, start=1):
        tag = _safe(ori.label)
        owf, reg_wf = ori_wfs[ori.label], reg_wfs[ori.label]
        wf.connect(ref_wf, 'outputnode.brain_mask', reg_wf, 'inputnode.fixed_mask')
        if ori is not ref and not ori.user_mask:
            carry = pe.Node(MaskFromReference(native=str(ori.echoes[0].magnitude)),
                            name=f'mask_from_reference_{tag}')
            wf.connect([
                (ref_wf, carry, [('outputnode.brain_mask', 'in_mask')]),
                (reg_wf, carry, [('outputnode.xfm', 'in_xfm')]),
                (carry, owf, [('out_mask', 'inputnode.user_mask')]),
            ])  # fmt: skip
        twf = init_to_reference_wf(ori, ref, multi_solver=opts.multi_solver)
        wf.connect([
            (reg_wf, twf, [('outputnode.xfm', 'inputnode.xfm')]),
            (owf, twf, [('outputnode.local_field', 'inputnode.local_field'),
                        ('outputnode.local_mask', 'inputnode.local_mask')]),
            (twf, mwf, [('outputnode.field', f'inputnode.field{i}'),
                        ('outputnode.mask', f'inputnode.mask{i}'),
                        ('outputnode.b0_direction', f'inputnode.b0{i}')]),
        ])  # fmt: skip
        if single:
            wf.connect([
                (owf, twf, [('outputnode.total_field', 'inputnode.total_field'),
                            ('outputnode.eroded_mask', 'inputnode.eroded_mask')]),
                (twf, mwf, [('outputnode.total_field', f'inputnode.total_field{i}'),
                            ('outputnode.total_mask', f'inputnode.total_mask{i}')]),
            ])  # fmt: skip
        if n < MIN_STI:
            continue
        app = pe.Node(ApparentSusceptibility(), name=f'apparent_{tag}')
        wf.connect([
            (mwf, app, [('outputnode.tensor', 'tensor'),
                        ('outputnode.common_mask', 'reference_mask')]),
            (twf, app, [('outputnode.b0_direction', 'b0_direction')]),
            (reg_wf, app, [('outputnode.xfm', 'in_xfm')]),
            (owf, app, [('outputnode.local_field', 'native'),
                        ('outputnode.local_mask', 'native_mask')]),
            (app, ds_wfs[ori.label], [('out_file', 'inputnode.apparent')]),
        ])  # fmt: skip
    return wf


def container_info(env=None) -> dict | None:
    """``GeneratedBy[].Container`` when qsmprep runs in its image (the Dockerfile and the
    Apptainer recipe set ``QSMPREP_CONTAINER``).

    >>> container_info({'QSMPREP_CONTAINER': 'docker'})['Type']
    'docker'
    >>> container_info({}) is None
    True
    """
    env = os.environ if env is None else env
    kind = env.get('QSMPREP_CONTAINER')
    if not kind:
        return None
    info = {'Type': kind, 'Tag': f'qsmprep/qsmprep:{__version__}'}
    if env.get('QSMPREP_CONTAINER_URI'):
        info['URI'] = env['QSMPREP_CONTAINER_URI']
    return info


def dataset_description(bids_dir, derivatives=None, env=None) -> dict:
    """``dataset_description.json`` of the derivatives dataset.

    ``DatasetLinks`` resolves the ``bids:raw:`` (and, with user masks from
    ``--derivatives``, ``bids:masks:``) URIs of the sidecars' ``Sources``.
    """
    generated = {'Name': 'qsmprep', 'Version': __version__,
                 'CodeURL': 'https://github.com/qsmprep/qsmprep'}
    container = container_info(env)
    if container:
        generated['Container'] = container
    raw = Path(bids_dir).resolve().as_uri()
    links = {'raw': raw}
    sources = [{'URL': raw}]
    if derivatives:
        links['masks'] = Path(derivatives).resolve().as_uri()
        sources.append({'URL': links['masks']})
    return {
        'Name': 'qsmprep derivatives',
        'BIDSVersion': '1.10.0',
        'DatasetType': 'derivative',
        'GeneratedBy': [generated],
        'SourceDatasets': sources,
        'DatasetLinks': links,
    }


BIDSIGNORE = """\
# qsmprep outputs that have no BIDS suffix yet (fields in ppm, tensor, eigenvector),
# reports and logs
*_field.nii.gz
*_field.json
*_tensor.nii.gz
*_tensor.json
*_vector.nii.gz
*_vector.json
*_xfm.txt
*_qsmprep.json
*.html
logs/
sub-*/figures
sub-*/log
"""
