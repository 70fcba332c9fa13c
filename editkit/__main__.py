"""`python -m editkit` runs the command line."""

import sys

from editkit.cli import main

sys.exit(main())
