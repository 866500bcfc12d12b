"""Physical constants and unit conversions.

qsmprep uses exactly one gyromagnetic ratio, the CODATA 2018 proton value
``GAMMA_BAR = γ/2π = 42.577478 MHz/T`` (also used by SEPIA).  Phase φ (rad) at echo time
TE (s) and field strength B0 (T) relates to the field shift δ (ppm) by

.. math:: δ = \\frac{φ}{2π \\bar γ B_0 \\mathrm{TE}} 10^6 .
"""

from __future__ import annotations

import numpy as np

from qsmprep.numerics._checks import positive, positive_array

#: Proton gyromagnetic ratio over 2π, Hz/T (CODATA 2018: 42.577 478 518 MHz/T, as in SEPIA).
GAMMA_BAR = 42.57747892e6
#: Proton gyromagnetic ratio, rad s⁻¹ T⁻¹.
GAMMA = 2.0 * np.pi * GAMMA_BAR

__all__ = [
    'GAMMA',
    'GAMMA_BAR',
    'hz_to_ppm',
    'hz_to_rad',
    'ppm_scale',
    'ppm_to_hz',
    'ppm_to_rad',
    'rad_to_hz',
    'rad_to_ppm',
]


def ppm_scale(echo_time, field_strength):
    """Radians per ppm: ``2π γ̄ B0 TE · 1e-6`` (array if ``echo_time`` is a sequence).

    >>> round(float(ppm_scale(0.020, 3.0)), 2)
    16.05
    """
    b0 = positive(field_strength, 'field_strength', 'T')
    te = positive_array(echo_time, 'echo_time', 's')
    scale = 2.0 * np.pi * GAMMA_BAR * b0 * te * 1e-6
    return scale if np.ndim(echo_time) else float(scale[0])


def rad_to_ppm(phase, echo_time, field_strength):
    """Convert phase (rad) at echo time ``echo_time`` (s) and B0 ``field_strength`` (T) to ppm.

    >>> round(float(rad_to_ppm(16.05, 0.020, 3.0)), 3)
    1.0
    """
    return np.asarray(phase) / ppm_scale(echo_time, field_strength)


def ppm_to_rad(field, echo_time, field_strength):
    """Convert a field shift (ppm) to phase (rad) at ``echo_time`` (s) and ``field_strength`` (T).

    >>> round(float(ppm_to_rad(1.0, 0.020, 3.0)), 2)
    16.05
    """
    return np.asarray(field) * ppm_scale(echo_time, field_strength)


def rad_to_hz(phase, echo_time):
    """Convert phase (rad) accumulated over ``echo_time`` (s) to frequency (Hz).

    >>> round(float(rad_to_hz(2 * np.pi, 0.01)), 6)
    100.0
    """
    return np.asarray(phase) / (2.0 * np.pi * positive(echo_time, 'echo_time', 's'))


def hz_to_rad(freq, echo_time):
    """Convert frequency (Hz) to phase (rad) accumulated over ``echo_time`` (s)."""
    return np.asarray(freq) * 2.0 * np.pi * positive(echo_time, 'echo_time', 's')


def hz_to_ppm(freq, field_strength):
    """Convert frequency offset (Hz) to ppm of the Larmor frequency at ``field_strength`` (T).

    >>> round(float(hz_to_ppm(127.73, 3.0)), 3)
    1.0
    """
    return np.asarray(freq) / (GAMMA_BAR * positive(field_strength, 'field_strength', 'T')) * 1e6


def ppm_to_hz(field, field_strength):
    """Convert ppm to frequency offset (Hz) at ``field_strength`` (T)."""
    return np.asarray(field) * GAMMA_BAR * positive(field_strength, 'field_strength', 'T') * 1e-6
