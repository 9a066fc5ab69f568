"""The browser client's npm package (clients/js), checked the way CI can: with node.

``npm ci`` installs the pinned tools of the package and of its bundler
fixture (the npm registry is the only network they need), then: the
committed builds are the build of the source (static/gateway.js included),
the Node tests pass, ``tsc`` takes the declarations against a sample, and
Vite, webpack and esbuild at their default targets bundle an app that
imports the package. Skipped, with the reason, where node or npm is missing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.servers import ROOT

pytestmark = pytest.mark.slow

PACKAGE = ROOT / "clients" / "js"
BUNDLERS = PACKAGE / "test" / "bundlers"
NPM_TIMEOUT_S = 600  # a cold npm cache on a slow network


def run(args: list[str], cwd: Path, timeout: float = 300) -> str:
    """Run ``args``; fail with its output when it fails."""
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    output = f"{done.stdout}\n{done.stderr}"
    assert done.returncode == 0, f"{' '.join(args)} (in {cwd}) exited {done.returncode}:\n{output}"
    return output


@pytest.fixture(scope="module")
def node() -> str:
    """``npm ci`` in the package, once; the path of node."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip(
            "node and npm are needed for the JavaScript package (apt-get install nodejs npm)"
        )
    run([npm, "ci", "--no-audit", "--no-fund"], PACKAGE, timeout=NPM_TIMEOUT_S)
    return node


def test_committed_builds_are_the_build_of_the_source(node):
    """dist/ and static/gateway.js equal a fresh esbuild of clients/js/src: they cannot drift."""
    assert "match src/" in run([node, "build.mjs", "--check"], PACKAGE)


def test_node_tests_of_the_client_pass(node):
    """URLs, cursors, backoff, tokens, option checks: node --test, no browser."""
    output = run([node, "--test", "test/units.test.mjs", "test/client.test.mjs"], PACKAGE)
    assert "# fail 0" in output


def test_tsc_takes_the_declarations_against_a_sample(node):
    """Every option and event typed: a sample page compiles, the wrong uses do not."""
    run([node, "node_modules/typescript/bin/tsc", "-p", "test/types"], PACKAGE)


def test_vite_webpack_and_esbuild_bundle_the_package_at_their_default_targets(node):
    """Each bundles an app importing the package; the bundle runs and reaches the client."""
    npm = shutil.which("npm")
    assert npm
    run([npm, "ci", "--no-audit", "--no-fund"], BUNDLERS, timeout=NPM_TIMEOUT_S)
    output = run([node, "check.mjs"], BUNDLERS)
    assert "6 passed, 0 failed" in output, output
