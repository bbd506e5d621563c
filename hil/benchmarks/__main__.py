"""`python -m hil.benchmarks` is `scripts/bench`."""
import sys

from hil.benchmarks.suite import main

sys.exit(main())
