import sys

from inference.checkpoint_builder.cli import main

sys.exit(main())
