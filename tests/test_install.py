"""The package as a user installs it: a fresh virtualenv, one ``pip install``, the docs' snippets.

The project as it stands in this working tree (tracked and new files, as
git sees them) is copied into a temporary git repository, then installed
into a new virtualenv twice: as a path (with Flask and FastAPI, which the
snippets import) and again as ``git+file://`` (the git-URL form). Every
process then runs from a folder outside the project with no ``PYTHONPATH``:
the installed console script serves the demo and the Lua functions, and
each of the documented Flask, FastAPI and Starlette snippets (taken from
README.md and docs/*.md by its ``<!-- snippet: name -->`` marker, so this
proves the docs) delivers a message to an SSE reader.

pip fetches from the configured index through its own cache; on this
machine the install takes ~10 s, the whole module ~30 s.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest
from packaging.requirements import Requirement

from tests.clients import read_sse, subscribed
from tests.servers import ROOT, RedisServer, _death_pact, free_port, wait_until

pytestmark = pytest.mark.anyio
slow = pytest.mark.slow  # each test but the last builds on the module's fresh virtualenv

SNIPPET = re.compile(r"<!-- snippet: ([\w-]+) -->\n```python\n(.*?)```", re.DOTALL)
PIP_TIMEOUT_S = 300


def readme_snippets() -> dict[str, str]:
    """The marked Python snippets of README.md and docs/*.md, by name (each name once)."""
    found: list[tuple[str, str]] = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        found += SNIPPET.findall(page.read_text())
    names = [name for name, _ in found]
    assert len(names) == len(set(names)), f"a snippet marker is used twice: {names}"
    return dict(found)


@dataclass
class Installed:
    venv: Path
    home: Path  # a folder outside the project, where the apps run
    seconds: dict[str, float]

    def env(self, extra: Mapping[str, str] = {}) -> dict[str, str]:
        """A user's shell with the virtualenv active: no PYTHONPATH, no project folder."""
        path = f"{self.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin"
        return {"PATH": path, "HOME": os.environ.get("HOME", "/"), "LANG": "C.UTF-8", **extra}

    def run(self, *args: str, env: Mapping[str, str] = {}) -> str:
        done = subprocess.run(
            args, env=self.env(env), cwd=self.home, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout


def _project_copy(into: Path) -> Path:
    """This working tree's files (tracked and untracked, not ignored) as a fresh git repository."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(into)]
    for step in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "snapshot"]):
        subprocess.run([*git, *step], check=True, capture_output=True)
    return into


def _pip(venv: Path, *args: str) -> float:
    started = time.monotonic()
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *args],
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return time.monotonic() - started


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """A new virtualenv with the project installed from a path, then again from a git URL."""
    base = tmp_path_factory.mktemp("install")
    project = _project_copy(base / "project")
    venv = base / "venv"
    seconds: dict[str, float] = {}
    started = time.monotonic()
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True, timeout=120)
    seconds["venv"] = time.monotonic() - started
    seconds["pip install <path> flask fastapi"] = _pip(venv, str(project), "flask", "fastapi")
    seconds["pip install git+file://"] = _pip(
        venv, "--force-reinstall", "--no-deps", f"git+file://{project}"
    )
    home = base / "home"
    home.mkdir()
    print(f"\ninstall times (s): {seconds}")
    return Installed(venv, home, seconds)


@contextmanager
def serving(
    installed: Installed, name: str, command: list[str], env: Mapping[str, str]
) -> Iterator[str]:
    """``command`` run in a folder of its own outside the project (README snippet ``name``
    written there as app.py, if it is one); yields its origin once it answers HTTP."""
    folder = installed.home / name
    folder.mkdir(exist_ok=True)
    snippet = readme_snippets().get(name)
    if snippet is not None:
        (folder / "app.py").write_text(snippet)
    port = free_port()
    args = [arg.replace("{port}", str(port)) for arg in command]
    log = folder / "log.txt"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            args,
            env=installed.env(env),
            cwd=folder,
            stdout=out,
            stderr=out,
            preexec_fn=_death_pact(),
        )
    origin = f"http://127.0.0.1:{port}"
    try:

        def answers() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited {proc.returncode}: {log.read_text()[-3000:]}")
            httpx.get(origin, timeout=1)
            return True

        wait_until(answers, timeout=30)
        yield origin
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def uvicorn(*extra: str) -> list[str]:
    return ["uvicorn", "app:app", "--host", "127.0.0.1", "--port", "{port}", *extra]


async def delivered(
    sse_base: str, channel: str, publish: httpx.Request
) -> tuple[httpx.Response, dict[str, str]]:
    """Send ``publish`` while an SSE reader of ``channel`` at ``sse_base`` waits; its answer and what the reader got."""
    async with subscribed(lambda *a, **kw: read_sse(sse_base, *a, **kw), channel, 1) as reader:
        with anyio.fail_after(20):
            async with httpx.AsyncClient(timeout=10) as client:
                answer = await client.send(publish)
    assert answer.status_code in (200, 201), answer.text
    return answer, reader.messages[0]


@pytest.fixture(scope="module")
def standalone(
    installed: Installed, redis_server: RedisServer
) -> Iterator[tuple[str, dict[str, str]]]:
    """The installed ``gateway`` console script on Redis (its Lua from the package); its origin and env."""
    env = {"REDIS_URL": redis_server.url, "GATEWAY_REDIS_PREFIX": f"gwinstall{os.getpid()}"}
    with serving(installed, "standalone", ["gateway", "--port", "{port}"], env) as origin:
        yield origin, env


@slow
def test_the_package_installs_with_its_pages_and_lua_from_a_path_and_a_git_url(installed):
    """Both forms install the package ``gateway``, its static files and Lua, its bounded dependencies."""
    found = installed.run(
        "python",
        "-c",
        "import gateway, gateway.app, importlib.metadata as m, importlib.resources as r;"
        "print(gateway.__file__); print(gateway.app.STATIC_DIR);"
        "print(sorted(p.name for p in gateway.app.STATIC_DIR.iterdir()));"
        "print(sorted(p.name for p in r.files('gateway.brokers').iterdir() if p.name.endswith('.lua')));"
        "print(m.requires('gateway')); print(m.distribution('gateway').read_text('direct_url.json'))",
    ).splitlines()
    site = str(installed.venv / "lib")
    assert found[0].startswith(site) and found[1].startswith(site), found
    assert found[1].endswith("gateway/static")
    for page in ("index.html", "dashboard.html", "gateway.js", "app.css"):
        assert page in found[2]
    assert found[3] == "['gateway.lua', 'presence.lua']"
    for bounded in ("starlette<2,>=1.10", "redis[hiredis]<9,>=8.1", "uvicorn[standard]<1,>=0.54"):
        assert f"'{bounded}'" in found[4], found[4]
    assert '"vcs_info"' in found[5] and "git" in found[5]  # the last install was the git URL
    installed.run("python", "-m", "pip", "check")


@slow
async def test_the_installed_gateway_serves_its_pages_and_publishes_over_redis(
    installed, standalone, channel
):
    """``gateway`` (the console script) serves /, /dashboard, the client, and delivers on Redis."""
    origin, _ = standalone
    async with httpx.AsyncClient(base_url=origin, timeout=10) as client:
        for path, text in (
            ("/", "<html"),
            ("/dashboard", "<html"),
            ("/static/gateway.js", "Gateway"),
        ):
            page = await client.get(path)
            assert page.status_code == 200 and text in page.text, path
    request = httpx.Request("POST", f"{origin}/publish/{channel}", content=b"on redis")
    answer, got = await delivered(origin, channel, request)
    assert (got["id"], got["data"]) == (answer.json()["id"], "on redis")


@slow
async def test_the_readme_starlette_snippet_delivers_to_an_sse_reader(installed, channel):
    """Mounted at /realtime on the embedded broker, its route publishes with ``realtime.publisher``."""
    with serving(installed, "starlette", uvicorn(), {}) as origin:
        request = httpx.Request("POST", f"{origin}/notify/{channel}", content=b"from starlette")
        answer, got = await delivered(f"{origin}/realtime", channel, request)
    assert (got["id"], got["event"], got["data"]) == (
        answer.json()["id"],
        "notice",
        "from starlette",
    )


@slow
async def test_the_readme_fastapi_snippet_delivers_and_answers_a_refusal(
    installed, redis_server, channel
):
    """Mounted, on Redis, no URL set for publishing; a bad channel comes back as the route's 400."""
    env = {"REDIS_URL": redis_server.url, "GATEWAY_REDIS_PREFIX": f"gwfastapi{os.getpid()}"}
    with serving(installed, "fastapi", uvicorn(), env) as origin:
        request = httpx.Request("POST", f"{origin}/notify/{channel}", content=b"from fastapi")
        answer, got = await delivered(f"{origin}/realtime", channel, request)
        async with httpx.AsyncClient(timeout=10) as client:
            refused = await client.post(f"{origin}/notify/no%20spaces", content=b"x")
    assert (got["id"], got["event"], got["data"]) == (answer.json()["id"], "notice", "from fastapi")
    assert refused.status_code == 400 and "invalid channel" in refused.json()["error"]


@slow
async def test_the_readme_flask_snippet_publishes_over_redis_and_says_when_unset(
    installed, standalone
):
    """Flask's dev server publishes with ``publish()`` over REDIS_URL; with nothing set, a 500 with the reason."""
    origin, env = standalone
    flask = ["flask", "--app", "app", "run", "--port", "{port}"]
    with serving(installed, "flask", flask, env) as app:
        request = httpx.Request("POST", f"{app}/orders/42/ship")
        answer, got = await delivered(origin, "order:42", request)
    assert (got["id"], got["event"]) == (answer.json()["published"], "status")
    assert got["data"] == '{"status": "shipped"}'
    with serving(installed, "flask", flask, {}) as app:
        async with httpx.AsyncClient(timeout=10) as client:
            unset = await client.post(f"{app}/orders/42/ship")
    assert unset.status_code == 500 and "set GATEWAY_URL" in unset.json()["error"]


@slow
async def test_the_readme_fastapi_publisher_snippet_publishes_over_http(
    installed, standalone, channel
):
    """A FastAPI app without the gateway publishes to it with ``AsyncPublisher`` over GATEWAY_URL."""
    origin, _ = standalone
    with serving(installed, "fastapi-publisher", uvicorn(), {"GATEWAY_URL": origin}) as app:
        request = httpx.Request("POST", f"{app}/notify/{channel}", content=b"over http")
        answer, got = await delivered(origin, channel, request)
    assert (got["id"], got["event"], got["data"]) == (answer.json()["id"], "notice", "over http")


def test_the_readme_marks_every_snippet_this_module_runs():
    """A renamed or dropped marker would let a snippet go untested: all four are found."""
    assert set(readme_snippets()) == {"starlette", "fastapi", "flask", "fastapi-publisher"}


def test_the_pins_of_requirements_txt_satisfy_the_packages_bounds():
    """The Procfile platform's pins and pip's bounds name one tested set: bump both together."""
    declared = {
        Requirement(line).name.lower(): Requirement(line)
        for line in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    pins = [
        Requirement(line.split("#")[0])
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    assert pins
    for pin in pins:
        (version,) = [spec.version for spec in pin.specifier if spec.operator == "=="]
        bounds = declared[pin.name.lower()]
        assert bounds.specifier.contains(version), (str(pin), str(bounds))
        assert bounds.extras == pin.extras, (str(pin), str(bounds))
        assert {spec.operator for spec in bounds.specifier} >= {">=", "<"}, str(bounds)
