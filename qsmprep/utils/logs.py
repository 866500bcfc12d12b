"""Log levels shared by the command line and the long-running steps.

``qsmprep`` shows ``IMPORTANT`` (25) messages by default, ``INFO`` with ``-v``, ``VERBOSE`` (15)
with ``-vv`` and ``DEBUG`` with ``-vvv``.  Progress of long steps that users wait for (dataset
building, training epochs, checkpoints) is logged at ``IMPORTANT``.
"""

IMPORTANT = 25
VERBOSE = 15

__all__ = ['IMPORTANT', 'VERBOSE']
