"""Log records: what reaches a container's log is one JSON record a line, even what native code prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
# A process that logs as tsm-serve does, then writes to fd 1 as C++ code would: itself and through a child.
SCRIPT = """
import os, subprocess, sys
from service.logs import configure_logging, stdout_into_log
configure_logging("INFO", "json")
stdout_into_log()
os.write(1, b"from native code\\n\\n")
subprocess.run([sys.executable, "-c", "print('from a child process')"], check=True)
import logging, time
time.sleep(0.5)  # the forwarding thread is a daemon: let it catch up before the interpreter exits
logging.getLogger("service.test").info("done")
"""


def test_what_the_process_and_its_children_print_becomes_json_records() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=True)
    assert done.stdout == ""
    records = [json.loads(line) for line in done.stderr.splitlines()]  # each line a JSON record, or this fails
    printed = [(r["logger"], r["level"], r["message"]) for r in records if r["logger"] == "paddle"]
    assert printed == [("paddle", "INFO", "from native code"), ("paddle", "INFO", "from a child process")]
    assert records[-1]["message"] == "done"


def test_paddles_ccache_warning_is_not_logged_but_other_warnings_are() -> None:
    script = ("import warnings\nfrom service.logs import configure_logging\nconfigure_logging('INFO', 'json')\n"
              "import paddle\nwarnings.warn('a real warning')\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=True)
    records = [json.loads(line) for line in done.stderr.splitlines()]
    assert not [r for r in records if "ccache" in r["message"]]  # Paddle warns of it at every import
    assert any("a real warning" in r["message"] and r["level"] == "WARNING" for r in records)
