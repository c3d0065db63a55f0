import sys

from cathrepo.cli import main

sys.exit(main())
