import sys

from sfcompile.cli import main

sys.exit(main())
