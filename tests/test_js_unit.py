"""The pure JavaScript (query building, backoff, buffer, ANSI, the stream client's state
machine against a fake EventSource) under node's own test runner: `node --test tests/js/`."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_node_unit_tests():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the JavaScript unit tests in tests/js/ need it")
    proc = subprocess.run([node, "--test", "tests/js/"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "# fail 0" in proc.stdout
    assert "# pass 0" not in proc.stdout, "no JavaScript test ran"
