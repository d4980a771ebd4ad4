"""``python -m kilosort_docker.groundtruth``: see :mod:`kilosort_docker.groundtruth.run`."""

import sys

from kilosort_docker.groundtruth.run import main

sys.exit(main())
