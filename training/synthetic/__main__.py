"""``python -m training.synthetic``: write a demo-world dataset (see training/synthetic/dataset.py)."""

import sys

from training.synthetic.dataset import main

sys.exit(main())
