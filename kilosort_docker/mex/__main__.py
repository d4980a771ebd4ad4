"""``python3 -m kilosort_docker.mex ...``: the mex command line (:mod:`kilosort_docker.mex.cli`)."""

import sys

from kilosort_docker.mex.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python3 -m kilosort_docker.mex"))
