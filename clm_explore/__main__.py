"""``python -m clm_explore``: the command line, as ``clm-explore``."""

from clm_explore.cli import main

raise SystemExit(main())
