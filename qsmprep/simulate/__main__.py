"""``python -m qsmprep.simulate``: same as the ``qsmprep-simulate`` console script."""

import sys

from qsmprep.simulate.cli import main

if __name__ == '__main__':
    sys.exit(main())
