"""qsmprep-simulate: multi-orientation, multi-echo GRE BIDS datasets with ground truth.

A numerical head phantom (MNI152 anatomy bundled with nilearn; synthetic skull, sinuses,
deep grey nuclei, veins and anisotropic white matter) is rotated into several head
orientations relative to B0, its field computed with the susceptibility-tensor forward
model, and multi-echo magnitude and phase written as a BIDS raw dataset; the ground truth is
a derivatives dataset (``derivatives/qsmprep-simulate``).

>>> from qsmprep.simulate import PRESETS
>>> sorted(PRESETS)
['7t', 'cohort', 'demo', 'full', 'tiny']
"""

from qsmprep.simulate.api import (
    OutputExistsError,
    SimulationSummary,
    SubjectSimulation,
    simulate_dataset,
    simulate_subject,
)
from qsmprep.simulate.presets import PRESETS, SimulationConfigError, resolve_config

__all__ = ['PRESETS', 'OutputExistsError', 'SimulationConfigError', 'SimulationSummary',
           'SubjectSimulation', 'resolve_config', 'simulate_dataset', 'simulate_subject']
