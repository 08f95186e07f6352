import sys

from opo.cli import main

sys.exit(main())
