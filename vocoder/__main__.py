"""`python -m vocoder` runs the command line."""
import sys

from vocoder.cli import main

sys.exit(main())
