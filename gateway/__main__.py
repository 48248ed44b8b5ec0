"""`python -m gateway`: the same as the `nest-gateway` console script."""

import sys

from gateway.main import main

sys.exit(main())
