"""``python -m weightspace.cli``: the ``weightspace`` command."""
import sys

from weightspace.cli import main

if __name__ == "__main__":  # importing the module (pkgutil.walk_packages) runs nothing
    sys.exit(main())
