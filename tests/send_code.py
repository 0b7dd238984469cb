"""A delivery command for tests: appends what it was given to a JSON-lines outbox.

argv: OUTBOX [EXIT_STATUS]; the message arrives on stdin, the address in STEPGATE_ADDRESS.
"""

import json
import os
import sys

outbox = sys.argv[1]
status = int(sys.argv[2]) if len(sys.argv) > 2 else 0
message = sys.stdin.read()
if status == 0:
    with open(outbox, "a") as fh:
        fh.write(json.dumps({"address": os.environ["STEPGATE_ADDRESS"],
                             "channel": os.environ["STEPGATE_CHANNEL"],
                             "message": message, "argv": sys.argv[1:]}) + "\n")
sys.exit(status)
