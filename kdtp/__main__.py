"""Entry point of ``python -m kdtp`` (the commands live in ``kdtp.cli``)."""
import sys

from .cli import main

sys.exit(main())
