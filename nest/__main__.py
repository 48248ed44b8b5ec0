"""`python -m nest` is the `nest` command."""

import sys

from nest.cli import main

sys.exit(main())
