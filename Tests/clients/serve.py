"""Start the real onestep-serve binary on a free loopback port for a client test, and stop it (SIGTERM, drain).

The binary is $ONESTEP_BIN/onestep-serve (default: .build/release); it serves the repository's models/ folder
unless the test gives --models.
"""
import os
import re
import signal
import subprocess
import tempfile
import time
import urllib.request

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def binary():
    folder = os.environ.get("ONESTEP_BIN", os.path.join(REPO, ".build", "release"))
    path = os.path.join(folder, "onestep-serve")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"{path} not found: build it with swift build -c release --product onestep-serve "
                           "(or set ONESTEP_BIN to the folder that holds it)")
    return path


class Server:
    """`with Server() as s:` runs onestep-serve --port 0; s.base is its http://127.0.0.1:PORT."""

    def __init__(self, *flags):
        self.flags = list(flags)
        self.proc = None
        self.base = None
        self.log = tempfile.NamedTemporaryFile(prefix="onestep-client-test-", suffix=".log", delete=False)

    def __enter__(self):
        self.proc = subprocess.Popen([binary(), "--port", "0", *self.flags], cwd=REPO,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            with open(self.log.name) as f:
                m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", f.read())
            if m:
                self.base = m.group(1)
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.__exit__(None, None, None)
        raise RuntimeError("onestep-serve did not start: " + self.output())

    def output(self):
        with open(self.log.name) as f:
            return f.read()

    def get(self, path):
        with urllib.request.urlopen(self.base + path, timeout=30) as r:
            return r.status, dict(r.headers), r.read()

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        os.unlink(self.log.name)
        return False


def read(*parts):
    """A repository file's text."""
    with open(os.path.join(REPO, *parts)) as f:
        return f.read()
