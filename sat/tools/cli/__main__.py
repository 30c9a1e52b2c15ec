"""``python -m sat.tools.cli``: the ``sat`` command without its console script."""

import sys

from sat.tools.cli.main import main

sys.exit(main())
