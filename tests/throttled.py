"""A ``python -m kdtp`` whose training batches each take at least a given time.

Tests that kill or race real processes need runs long enough to overlap or to be caught
mid-epoch whatever the machine's speed; ``THROTTLED.format(seconds)`` is the program text.
"""
THROTTLED = """
import sys, time
import kdtp.batches as data
plain_iter = data.DeviceLoader.__iter__
def throttled(self):
    for batch in plain_iter(self):
        if self.train:
            time.sleep({0})
        yield batch
data.DeviceLoader.__iter__ = throttled
from kdtp.cli import main
sys.exit(main(sys.argv[1:]))
"""
