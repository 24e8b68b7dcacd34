"""`python -m llava.export`: see `llava.export`."""

import sys

from llava.export import main

sys.exit(main())
