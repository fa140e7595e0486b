"""``python -m ssl_photoz.cli``: the ``ssl-photoz`` command."""

import sys

from ssl_photoz.cli import main

sys.exit(main())
