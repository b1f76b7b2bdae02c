"""`python -m robustlab …` (also what `torchrun -m robustlab …` runs)."""

import sys

from robustlab.cli import main

sys.exit(main())
