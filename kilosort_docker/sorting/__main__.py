"""``python -m kilosort_docker.sorting``: see :mod:`kilosort_docker.sorting.cli`."""

import sys

from kilosort_docker.sorting.cli import main

sys.exit(main())
