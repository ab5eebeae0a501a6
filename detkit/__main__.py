"""``python -m detkit`` (and ``torchrun -m detkit``) runs the ``detkit`` command."""

import sys

from detkit.cli import main

sys.exit(main())
