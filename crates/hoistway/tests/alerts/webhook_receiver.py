"""A webhook receiver for the alert tests: verifies each delivery with the standardwebhooks
package (an implementation independent of Hoistway's), and answers as the file `mode` in its
directory says: `ok` (204, and the delivery is appended to received.jsonl), `fail` (503) or
`gone` (410). Prints its port on the first line of stdout."""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook

DIR = sys.argv[1]
HOOK = Webhook(sys.argv[2])


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        try:
            payload = HOOK.verify(body, dict(self.headers.items()))
        except Exception as e:  # a bad signature is a test failure: say so in the record
            payload = {"verification_error": str(e)}
        with open(os.path.join(DIR, "mode")) as f:
            mode = f.read().strip()
        status = {"ok": 204, "fail": 503, "gone": 410}[mode]
        with open(os.path.join(DIR, "attempts.jsonl"), "a") as f:
            f.write(json.dumps({"id": self.headers.get("webhook-id"), "status": status}) + "\n")
        if status == 204:
            with open(os.path.join(DIR, "received.jsonl"), "a") as f:
                record = {"id": self.headers.get("webhook-id"), "payload": payload}
                f.write(json.dumps(record) + "\n")
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
