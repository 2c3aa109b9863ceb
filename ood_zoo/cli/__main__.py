"""``python -m ood_zoo.cli``: the ``ood-zoo`` command."""

import sys

from . import main

sys.exit(main())
