"""``python -m gan2flow``: the same as the ``gan2flow`` console script."""
import sys

from gan2flow.cli import main

sys.exit(main())
