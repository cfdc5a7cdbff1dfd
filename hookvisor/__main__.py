"""`python -m hookvisor`: the same as the `hookvisor` console script."""

import sys

from hookvisor.cli.main import main

sys.exit(main())
