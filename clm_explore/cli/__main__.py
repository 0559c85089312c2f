import sys

from clm_explore.cli import main

sys.exit(main())
