"""Citation boilerplate (``logs/CITATION.md``) describing what was run, with references."""

from __future__ import annotations

from pathlib import Path

from qsmprep import __version__

REFERENCES = {
    'qsmprep': 'qsmprep developers. qsmprep: multi-orientation QSM and susceptibility tensor '
               'imaging as a BIDS-App. https://github.com/qsmprep/qsmprep',
    'nipype': 'Gorgolewski K, et al. Nipype: a flexible, lightweight and extensible neuroimaging '
              'data processing framework in Python. Front Neuroinform 2011;5:13.',
    'bids': 'Gorgolewski KJ, et al. The brain imaging data structure. Sci Data 2016;3:160044.',
    'bet': 'Smith SM. Fast robust automated brain extraction. Hum Brain Mapp 2002;17:143-155.',
    'laplacian': 'Schofield MA, Zhu Y. Fast phase unwrapping algorithm for interferometric '
                 'applications. Opt Lett 2003;28:1194-1196.',
    'vsharp': 'Li W, Wu B, Liu C. Quantitative susceptibility mapping of human brain reflects '
              'spatial variation in tissue composition. NeuroImage 2011;55:1645-1656.',
    'vsharp-ls': 'Wu B, Li W, Guidon A, Liu C. Whole brain susceptibility mapping using '
                 'compressed sensing. Magn Reson Med 2012;67:137-147.',
    'ismv': 'Wen Y, Zhou D, Liu T, Spincemaille P, Wang Y. An iterative spherical mean value '
            'method for background field removal in MRI. Magn Reson Med 2014;72:1065-1071.',
    'pdf': 'Liu T, et al. A novel background field removal method for MRI using projection '
           'onto dipole fields. NMR Biomed 2011;24:1129-1136.',
    'lbv': 'Zhou D, Liu T, Spincemaille P, Wang Y. Background field removal by solving the '
           'Laplacian boundary value problem. NMR Biomed 2014;27:312-319.',
    'resharp': 'Sun H, Wilman AH. Background field removal using spherical mean value filtering '
               'and Tikhonov regularization. Magn Reson Med 2014;71:1151-1157.',
    'tkd': 'Shmueli K, et al. Magnetic susceptibility mapping of brain tissue in vivo using MRI '
           'phase data. Magn Reson Med 2009;62:1510-1522.',
    'cosmos': 'Liu T, et al. Calculation of susceptibility through multiple orientation '
              'sampling (COSMOS). Magn Reson Med 2009;61:196-204.',
    'sti': 'Liu C. Susceptibility tensor imaging. Magn Reson Med 2010;63:1471-1477.',
}


def boilerplate(options) -> str:
    """Methods text for the options actually used."""
    mask = {'bet': 'FSL BET [@bet]', 'python': 'a Python port of BET [@bet]',
            'user': 'user-supplied masks'}[options['mask_method']]
    reg = {'flirt': 'FSL FLIRT (6 degrees of freedom)',
           'sitk': 'SimpleITK rigid registration (mutual information)'}[options['registration']]
    bgrm = options.get('bgremoval') or 'vsharp'
    background = {
        'vsharp': f"V-SHARP (TSVD threshold {options['vsharp_threshold']})",
        'vsharp-ls': 'V-SHARP with a least-squares deconvolution consistent on every SMV '
                     'shell (qsmprep)',
        'ismv': 'iSMV (iterative spherical mean value)',
        'pdf': 'projection onto dipole fields (PDF)',
        'lbv': 'the Laplacian boundary value method (LBV)',
        'resharp': 'RESHARP (SMV filtering with Tikhonov regularisation)'}[bgrm]
    text = f"""\
# Methods

Susceptibility maps were computed with qsmprep {__version__} [@qsmprep], built on Nipype
[@nipype], from multi-echo gradient-echo data organised in BIDS [@bids].  For every head
orientation, a brain mask was obtained from the first-echo magnitude with {mask} and eroded
by {options['mask_erosion']} voxel(s).  The phase of every echo was unwrapped with a
Laplacian method ({options['unwrapping']}) [@laplacian], converted to ppm by dividing by
2π·γ̄·TE·B0 (γ̄ = 42.57747892 MHz/T), and the echoes were combined
({options['echo_combination']}; 'auto' is a linear fit against echo time with
intercept for multi-echo data).  Background fields were removed with {background}
[@{bgrm}], and a single-orientation
susceptibility map was computed with thresholded k-space division (threshold
{options['tkd_threshold']}) [@tkd].  Each orientation's first-echo magnitude was registered
to the reference orientation with {reg}; local fields were resampled into the reference
space and each B0 direction was rotated into the reference frame.  With two or more
orientations COSMOS [@cosmos] was computed; with six or more, the susceptibility tensor was
estimated per k-space point (STI) [@sti], giving χ33, the mean magnetic susceptibility, the
magnetic susceptibility anisotropy and the principal eigenvector.

# References

"""
    keys = ['qsmprep', 'nipype', 'bids', 'laplacian', bgrm, 'tkd', 'cosmos', 'sti']
    if options['mask_method'] != 'user':
        keys.insert(3, 'bet')
    return text + '\n'.join(f'[@{k}]: {REFERENCES[k]}' for k in keys) + '\n'


def write_citation(path, options) -> Path:
    """Write :func:`boilerplate` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from qsmprep.utils.fsutils import write_text

    write_text(path, boilerplate(options))  # atomic: no half-written file
    return path
