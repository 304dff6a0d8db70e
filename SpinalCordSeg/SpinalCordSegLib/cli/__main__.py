"""``python -m SpinalCordSegLib.cli``: the ``spinalcordseg`` command."""

import sys

from . import main

sys.exit(main())
