"""`python -m screener` = the `screener` command."""

import sys

from .cli import main

sys.exit(main())
