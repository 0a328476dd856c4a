"""`python -m mmcal ...`: the `mmcal` command, for environments whose scripts folder is not on PATH."""

import sys

from mmcal.cli import main

sys.exit(main())
