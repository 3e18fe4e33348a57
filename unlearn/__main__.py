import sys

from unlearn.cli import main

sys.exit(main())
