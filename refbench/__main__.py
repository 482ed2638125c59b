"""``python -m refbench`` runs the CLI."""

import sys

from refbench.cli import main

sys.exit(main())
