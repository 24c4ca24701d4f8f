import sys

from changescope.cli import main

sys.exit(main())
