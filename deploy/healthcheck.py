"""The container's health check: exit 0 when the gateway on $PORT is ready.

The image's HEALTHCHECK and compose.yaml's run it (a slim image has no
curl). /readyz answers 200 only while the broker link delivers, and 503
while the gateway drains after SIGTERM.
"""

import os
import sys
import urllib.request

url = f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/readyz"
try:
    with urllib.request.urlopen(url, timeout=4) as answer:
        sys.exit(0 if answer.status == 200 else 1)
except OSError as failed:  # urllib's HTTPError (a 503) is one
    print(f"{url}: {failed}", file=sys.stderr)
    sys.exit(1)
