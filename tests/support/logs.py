"""What a log line that is not the program's own looks like."""

import re

# absl/glog lines from TensorFlow's C++ ("I0000 00:00:... port.cc:153] ...",
# "E0000 ... cuInit ..."), absl's preamble, and the Python warning every
# re-load of a jax2tf export prints.
FOREIGN = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl)"
                     r"|unsaved custom gradients", re.M)
