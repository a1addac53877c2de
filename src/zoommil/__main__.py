import sys

from zoommil.cli import main

sys.exit(main())
