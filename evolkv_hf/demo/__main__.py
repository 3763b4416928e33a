"""``python -m evolkv_hf.demo``: the project's main job on the demo model (see :mod:`evolkv_hf.demo.job`)."""

import sys

from .job import main

sys.exit(main())
