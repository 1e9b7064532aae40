import sys

from orloj_rt.cli import main

sys.exit(main())
