"""`python -m nest_sidecar` runs the sidecar."""

from nest_sidecar.main import main

main()
