import sys

from training.cli import main

if __name__ == "__main__":  # spawned worker processes re-import this module: don't rerun the command
    sys.exit(main())
