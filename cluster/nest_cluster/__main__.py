"""`python -m nest_cluster`: how the product's `nest cluster` and `nest demo` run this command."""

import sys

from nest_cluster.cli import main

sys.exit(main())
