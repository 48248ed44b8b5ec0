"""`python -m nest_cluster.runner`: how `nest cluster up` starts the local node."""

import sys

from nest_cluster.runner.main import main

sys.exit(main())
