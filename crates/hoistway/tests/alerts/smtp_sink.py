"""An SMTP server for the alert tests (aiosmtpd): writes each message it accepts to
<dir>/mail-<n>.eml and prints its port on the first line of stdout."""

import os
import socket
import sys
import time

from aiosmtpd.controller import Controller

DIR = sys.argv[1]


class Sink:
    def __init__(self):
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        path = os.path.join(DIR, f"mail-{self.count}.eml")
        with open(path + ".tmp", "wb") as f:
            f.write(envelope.content)
        os.rename(path + ".tmp", path)
        return "250 OK"


probe = socket.socket()
probe.bind(("127.0.0.1", 0))
port = probe.getsockname()[1]
probe.close()
controller = Controller(Sink(), hostname="127.0.0.1", port=port)
controller.start()
print(port, flush=True)
while True:
    time.sleep(3600)
