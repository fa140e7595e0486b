"""``python -m ssl_photoz.cli``: the ``ssl-photoz`` command."""

import sys

from . import main

sys.exit(main())
