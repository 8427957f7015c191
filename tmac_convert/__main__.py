"""``python -m tmac_convert``: the same command line as ``tmac-convert``."""

from .cli import main

if __name__ == "__main__":
    main()
