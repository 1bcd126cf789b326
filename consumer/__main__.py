"""`python -m consumer` is the same as the `gr-consumer` script."""

import sys

from consumer.cli import main

sys.exit(main())
