"""`python -m nest.cluster.runner`: how `nest cluster up` starts the local node."""

import sys

from nest.cluster.runner.main import main

sys.exit(main())
