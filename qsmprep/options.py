"""The processing options of a participant run: one typed, frozen object, every default once.

:class:`PipelineOptions` is what the participant workflows read
(:func:`qsmprep.workflows.base.init_single_subject_wf`), what the citation boilerplate and
the report describe, and where the command line (:mod:`qsmprep.cli.parser`) and the run's
settings (:class:`qsmprep.cli.config.Settings`) take their defaults from.  Nothing below the
workflows restates a default: nodes get explicit values from here.

``'auto'`` choices (mask method, registration) are resolved against the machine by
:meth:`PipelineOptions.resolved` (FSL BET/FLIRT when installed, the Python methods
otherwise), so that a graph is always built from concrete methods.

>>> o = PipelineOptions()
>>> o.bgremoval, o.tkd_threshold, o.inversions
('vsharp', 0.15, ('tkd', 'ilsqr'))
>>> PipelineOptions(mask_erosion=-1)
Traceback (most recent call last):
...
ValueError: mask_erosion must be >= 0 (got -1)
>>> PipelineOptions(bgremoval='sharp')
Traceback (most recent call last):
...
ValueError: bgremoval must be one of vsharp, vsharp-ls, ismv, pdf, lbv, resharp (got 'sharp')
"""

from __future__ import annotations

import dataclasses
import shutil
from typing import Any

__all__ = ['CHOICES', 'DEFAULTS', 'PipelineOptions']

#: Allowed values of the options that take a fixed set of values.
CHOICES: dict[str, tuple[str, ...]] = {
    'mask_method': ('auto', 'bet', 'python', 'user'),
    'registration': ('auto', 'flirt', 'sitk'),
    'unwrapping': ('wrapped-difference', 'sin-cos'),
    'echo_combination': ('auto', 'average', 'weighted', 'linear-fit'),
    'bgremoval': ('vsharp', 'vsharp-ls', 'ismv', 'pdf', 'lbv', 'resharp'),
    'inversions': ('tkd', 'ilsqr'),
    'multi_solver': ('closed-form', 'single-step'),
}


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
    """Processing options (``qsmprep --help`` explains each one).

    Units: ``mask_erosion`` in voxels, ``mask_threshold`` a fraction of the robust
    magnitude range, ``vsharp_radii`` in mm (``None``: the voxel-size dependent default of
    :func:`qsmprep.numerics.bgremoval.vsharp_radii`), ``sti_regularization`` the weight of
    the anisotropy penalty (``None``: the solver's default, 0.3 closed form, 0.1
    single-step).
    """

    mask_method: str = 'auto'
    mask_erosion: int = 2
    mask_threshold: float = 0.2
    registration: str = 'auto'
    unwrapping: str = 'wrapped-difference'
    echo_combination: str = 'auto'
    bgremoval: str = 'vsharp'
    vsharp_radii: tuple[float, ...] | None = None
    vsharp_threshold: float = 0.05
    tkd_threshold: float = 0.15
    inversions: tuple[str, ...] = ('tkd', 'ilsqr')
    multi_solver: str = 'closed-form'
    sti_regularization: float | None = None
    model: str | None = None

    def __post_init__(self):
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            values = value if isinstance(value, tuple | list) else (value,)
            for v in values:
                if v not in allowed:
                    raise ValueError(f'{name} must be one of {", ".join(allowed)} (got {v!r})')
        if isinstance(self.inversions, list):
            object.__setattr__(self, 'inversions', tuple(self.inversions))
        if isinstance(self.vsharp_radii, list):
            object.__setattr__(self, 'vsharp_radii', tuple(self.vsharp_radii))
        if self.mask_erosion < 0:
            raise ValueError(f'mask_erosion must be >= 0 (got {self.mask_erosion})')
        if not 0 <= self.mask_threshold < 1:  # 0: no refinement of the BET mask
            raise ValueError(f'mask_threshold must lie in [0, 1) (got {self.mask_threshold})')
        if not 0 < self.tkd_threshold < 1:
            raise ValueError(f'tkd_threshold must lie in (0, 1) (got {self.tkd_threshold})')
        if not 0 < self.vsharp_threshold < 1:
            raise ValueError(
                f'vsharp_threshold must lie in (0, 1) (got {self.vsharp_threshold})')
        if self.vsharp_radii is not None and min(self.vsharp_radii) <= 0:
            raise ValueError(f'vsharp_radii must be positive (got {self.vsharp_radii})')
        if self.sti_regularization is not None and self.sti_regularization < 0:
            raise ValueError(
                f'sti_regularization must be >= 0 (got {self.sti_regularization})')

    # ----------------------------------------------------------------------------------------
    @classmethod
    def from_settings(cls, settings) -> PipelineOptions:
        """The processing options of a :class:`~qsmprep.cli.config.Settings` (or any object
        with attributes of the same names; missing ones keep their defaults)."""
        if settings is None:
            return cls()
        kw = {}
        for f in dataclasses.fields(cls):
            if hasattr(settings, f.name):
                value = getattr(settings, f.name)
                if f.name == 'model' and value is not None:
                    value = str(value)
                if f.name in ('inversions', 'vsharp_radii') and value is not None:
                    value = tuple(value)
                kw[f.name] = value
        return cls(**kw)

    def resolved(self) -> PipelineOptions:
        """``'auto'`` mask method and registration made concrete for this machine."""
        mask, reg = self.mask_method, self.registration
        if mask == 'auto':
            mask = 'bet' if shutil.which('bet') else 'python'
        if reg == 'auto':
            reg = 'flirt' if shutil.which('flirt') else 'sitk'
        return dataclasses.replace(self, mask_method=mask, registration=reg)

    def replace(self, **changes) -> PipelineOptions:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (tuples as lists), ``None`` kept."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    # mapping-style access, for code that reads options by name (the boilerplate, reports)
    def __getitem__(self, name):
        try:
            return getattr(self, name)
        except AttributeError:
            raise KeyError(name) from None

    def get(self, name, default=None):
        return getattr(self, name, default)


#: The defaults, for the parser's ``default=`` and the settings' field defaults.
DEFAULTS = PipelineOptions()
