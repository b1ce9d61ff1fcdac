"""dla: the Deep Learning Applications labs as reproducible experiments."""

import time

__version__ = "0.1.0"
STARTED = time.perf_counter()  # when dla was first imported: the start of a command, for its start-up time
