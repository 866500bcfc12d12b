"""qsmprep: multi-orientation QSM and susceptibility tensor imaging as a BIDS-App."""

from qsmprep.__about__ import __version__

__all__ = ['__version__']
