"""Speed benchmark; the same as `advmoe bench` (see advmoe/bench.py for what it measures)."""
import sys

from advmoe.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
