"""The container recipe end to end: the Dockerfile's image and compose.yaml's
deployment (Redis, two gateway replicas, Caddy in front), run with podman.

These machines reach no container registry, so the official images are
stood in for (deploy/standins/): a Debian base made with debootstrap, kept
between runs as a podman image and a tarball in ~/.cache/gateway-container,
serves as python:3.11-slim, and Redis and Caddy are Debian's packages on it.
Only the gateway's image is built anew each run (and removed after, with
the deployment's containers, network and volumes).

podman needs runc here (crun refuses mixed cgroups) and default ulimits
that fit under the hard ones: both are set in a containers.conf of the
test's own (CONTAINERS_CONF), not in the machine's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import websockets
import yaml
from playwright.sync_api import sync_playwright
from prometheus_client.parser import text_string_to_metric_families

from tests.clients import GAP
from tests.resilient import (
    Follower,
    Producer,
    assert_exactly_once_in_order,
    record,
    what_differs,
)
from tests.servers import ROOT, free_port
from tests.sse_client import events
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, WAIT_MS, wait_open, wait_rows

BASE_IMAGE = "localhost/gateway-standin-base:bookworm"
REDIS_IMAGE = "localhost/gateway-standin-redis:bookworm"
PROXY_IMAGE = "localhost/gateway-standin-caddy:bookworm"
STANDINS = ROOT / "deploy" / "standins"
CADDY_CA = "/data/caddy/pki/authorities/local/root.crt"
HEARTBEAT_S = 2
POLL_TIMEOUT_S = 25
STOP_GRACE_S = 20  # compose.yaml's stop_grace_period
RETRY_PAUSE_S = 0.05
COMMAND_TIMEOUT_S = 600


def _missing() -> str | None:
    """Why the container tests cannot run here, or None."""
    for tool in ("podman", "runc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/run installs podman, runc and debootstrap)"
    if _podman_compose() is None:
        return "podman-compose is not installed (requirements-dev.txt)"
    if (os.geteuid() != 0 or shutil.which("debootstrap") is None) and not _base_cached():
        return "the base image is made with debootstrap, as root: not here, and no base cached"
    return None


def _base_cached() -> bool:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gateway-container"
    present = subprocess.run(["podman", "image", "exists", BASE_IMAGE], capture_output=True)
    return present.returncode == 0 or (cache / "bookworm-base.tar").exists()


def _podman_compose() -> str | None:
    beside = Path(sys.executable).parent / "podman-compose"
    return str(beside) if beside.exists() else shutil.which("podman-compose")


pytestmark = pytest.mark.anyio


def in_containers(test: Any) -> Any:
    """Marks a test that builds and runs containers: slow, skipped where podman cannot."""
    why = _missing()
    return pytest.mark.slow(pytest.mark.skipif(why is not None, reason=str(why))(test))


@dataclass
class Podman:
    """podman and podman-compose with this test's containers.conf."""

    env: dict[str, str]

    def run(self, *args: str, check: bool = True, timeout: float = COMMAND_TIMEOUT_S) -> str:
        done = subprocess.run(
            args, env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
            )
        return done.stdout

    def podman(self, *args: str, check: bool = True, timeout: float = COMMAND_TIMEOUT_S) -> str:
        return self.run("podman", *args, check=check, timeout=timeout)

    def succeeds(self, *args: str) -> bool:
        done = subprocess.run(["podman", *args], env=self.env, capture_output=True, timeout=60)
        return done.returncode == 0


@dataclass
class Deployment:
    podman: Podman
    project: str
    url: str
    ca: Path
    image: str
    build_s: float

    def compose(self, *args: str) -> str:
        compose = _podman_compose()
        assert compose is not None
        return self.podman.run(compose, "-p", self.project, "-f", "compose.yaml", *args)

    def container(self, service: str) -> str:
        names = self.podman.podman(
            "ps",
            "-a",
            "--format",
            "{{.Names}}",
            "--filter",
            f"label=com.docker.compose.project={self.project}",
            "--filter",
            f"label=com.docker.compose.service={service}",
        ).split()
        assert len(names) == 1, names
        return names[0]

    def inside(self, service: str, code: str, *args: str) -> str:
        """Run Python in a service's container (the replicas publish no port of their own)."""
        return self.podman.podman("exec", self.container(service), "python", "-c", code, *args)

    def publish_on(self, service: str, channel: str, data: str) -> str:
        """Publish through one replica, from inside its container: the message's id."""
        answer = self.inside(service, PUBLISH, channel, data)
        return str(json.loads(answer)["id"])

    def connections_on(self, service: str, transport: str) -> float:
        text = self.inside(service, METRICS)
        for family in text_string_to_metric_families(text):
            if family.name == "gateway_connections":
                return sum(s.value for s in family.samples if s.labels["transport"] == transport)
        raise AssertionError("no gateway_connections gauge")

    def http(self, **kwargs: Any) -> httpx.AsyncClient:
        """An HTTP/2 client of the proxy, trusting the certificate Caddy made."""
        tls = ssl.create_default_context(cafile=str(self.ca))
        return httpx.AsyncClient(base_url=self.url, http2=True, verify=tls, **kwargs)

    def wss(self, path: str) -> Any:
        # A context of its own: httpx sets ALPN h2 on the one it is given, and a
        # WebSocket handshake is HTTP/1.1.
        tls = ssl.create_default_context(cafile=str(self.ca))
        return websockets.connect(self.url.replace("https", "wss") + path, ssl=tls, max_queue=None)


PUBLISH = """
import sys, urllib.request
request = urllib.request.Request(
    "http://127.0.0.1:8000/publish/" + sys.argv[1], data=sys.argv[2].encode(), method="POST"
)
print(urllib.request.urlopen(request, timeout=10).read().decode())
"""
METRICS = """
import urllib.request
print(urllib.request.urlopen("http://127.0.0.1:8000/metrics", timeout=10).read().decode())
"""


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(
        "[containers]\n"
        f'default_ulimits = ["nofile={hard}:{hard}", "nproc=32768:32768"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
    )
    return Podman({**os.environ, "CONTAINERS_CONF": str(conf)})


@pytest.fixture(scope="module")
def gateway_image(podman: Podman) -> Iterator[tuple[str, float]]:
    """The stand-ins (cached), then the gateway's image built anew: its tag and build time."""
    podman.run(str(STANDINS / "make-base.sh"), BASE_IMAGE)
    for image, recipe in (
        (REDIS_IMAGE, "redis.Containerfile"),
        (PROXY_IMAGE, "caddy.Containerfile"),
    ):
        if not podman.succeeds("image", "exists", image):
            podman.podman(
                "build",
                "--layers=false",
                "--build-arg",
                f"BASE_IMAGE={BASE_IMAGE}",
                "-f",
                str(STANDINS / recipe),
                "-t",
                image,
                str(STANDINS),
            )
    tag = f"localhost/realtime-gateway:test{os.getpid()}"
    started = time.monotonic()
    # Docker's format keeps HEALTHCHECK; no layers kept, so nothing is left behind.
    podman.podman(
        "build",
        "--format",
        "docker",
        "--layers=false",
        "--build-arg",
        f"BASE_IMAGE={BASE_IMAGE}",
        "-t",
        tag,
        ".",
    )
    build_s = time.monotonic() - started
    print(f"gateway image built in {build_s:.1f} s")
    try:
        yield tag, build_s
    finally:
        podman.podman("rmi", "-f", tag, check=False)


@pytest.fixture(scope="module")
def deployment(
    podman: Podman, gateway_image: tuple[str, float], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """compose.yaml up, on a free port of 127.0.0.1, until the proxy serves /readyz."""
    image, build_s = gateway_image
    port = free_port()
    project = f"gwtest{os.getpid()}"
    podman.env.update(
        PYTHON_IMAGE=BASE_IMAGE,
        REDIS_IMAGE=REDIS_IMAGE,
        PROXY_IMAGE=PROXY_IMAGE,
        GATEWAY_IMAGE=image,
        GATEWAY_HTTPS_PORT=f"127.0.0.1:{port}",
        GATEWAY_HEARTBEAT=str(HEARTBEAT_S),
        GATEWAY_POLL_TIMEOUT=str(POLL_TIMEOUT_S),
    )
    ca = tmp_path_factory.mktemp("proxy") / "root.crt"
    running = Deployment(podman, project, f"https://localhost:{port}", ca, image, build_s)
    try:
        running.compose("up", "-d")
        _wait_until_served(running)
        yield running
    finally:
        running.compose("down", "-v", "-t", "5")
        left = podman.podman(
            "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={project}"
        )
        assert not left.split(), f"containers left behind: {left}"


def _wait_until_served(deployment: Deployment) -> None:
    """Until the proxy sends requests to both replicas: two SSE streams, one on each."""
    deadline = time.monotonic() + 90
    proxy = deployment.container("proxy")
    while True:
        try:
            if not deployment.ca.exists():
                deployment.podman.podman("cp", f"{proxy}:{CADDY_CA}", str(deployment.ca))
            if _both_replicas_take_streams(deployment):
                return
        except (AssertionError, httpx.HTTPError, OSError):
            if time.monotonic() > deadline:
                raise
        assert time.monotonic() < deadline, "the proxy never sent streams to both replicas"
        time.sleep(0.5)


def _both_replicas_take_streams(deployment: Deployment) -> bool:
    """Two streams opened one after the other: round robin puts them apart once both are in."""
    tls = ssl.create_default_context(cafile=str(deployment.ca))
    with httpx.Client(base_url=deployment.url, http2=True, verify=tls, timeout=10) as client:
        with client.stream("GET", "/sse/warm-up") as first:
            assert first.status_code == 200
            next(first.iter_lines())  # ": subscribed"
            with client.stream("GET", "/sse/warm-up") as second:
                assert second.status_code == 200
                next(second.iter_lines())
                replicas = ("gateway-1", "gateway-2")
                return all(deployment.connections_on(name, "sse") >= 1 for name in replicas)


def procfile_command() -> tuple[dict[str, str], str]:
    """The Procfile's command: the variables it sets first, and the rest."""
    line = (ROOT / "Procfile").read_text().strip()
    assert line.startswith("web: ")
    words = line.removeprefix("web: ").split(" ")
    assignments = {}
    while re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        name, _, value = words.pop(0).partition("=")
        assignments[name] = value
    return assignments, " ".join(words)


def test_the_image_runs_the_procfile_command() -> None:
    """The Dockerfile's CMD is the Procfile's command, exec'd so that uvicorn is PID 1; the
    variables the Procfile sets before it are the image's ENV."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert cmd, "no CMD in exec form in the Dockerfile"
    assignments, command = procfile_command()
    assert json.loads(cmd.group(1)) == ["sh", "-c", f"exec {command}"]
    for name, value in assignments.items():
        assert re.search(rf"^ENV .*\b{name}={value}\b", dockerfile, re.M), name


def test_compose_gives_the_drain_its_time_and_the_proxy_every_replica() -> None:
    """stop_grace_period outlasts GATEWAY_SHUTDOWN_GRACE; the Caddyfile lists each replica."""
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    replicas = sorted(name for name in services if name.startswith("gateway"))
    assert replicas == ["gateway-1", "gateway-2"]
    upstreams = re.search(r"reverse_proxy (.+) \{", (ROOT / "deploy" / "Caddyfile").read_text())
    assert upstreams and upstreams.group(1).split() == [f"{name}:8000" for name in replicas]
    for name in replicas:
        service = services[name]
        grace = re.fullmatch(
            r"\$\{GATEWAY_SHUTDOWN_GRACE:-(\d+)\}", service["environment"]["GATEWAY_SHUTDOWN_GRACE"]
        )
        assert grace, service["environment"]
        assert service["stop_grace_period"] == f"{STOP_GRACE_S}s"
        assert STOP_GRACE_S >= int(grace.group(1)) + 5, "SIGKILL would cut the drain"
        assert service["environment"]["REDIS_URL"] == "redis://redis:6379/0"


@in_containers
async def test_the_image_runs_as_a_non_root_user_on_port_with_a_health_check(deployment):
    """Not root, uvicorn is PID 1, HEALTHCHECK runs /readyz, and $PORT moves the server."""
    podman = deployment.podman
    image = json.loads(podman.podman("image", "inspect", deployment.image))[0]
    assert image["Config"]["User"] == "10001:10001"
    assert image["Healthcheck"]["Test"] == ["CMD", "python", "/app/healthcheck.py"]
    replica = deployment.container("gateway-1")
    assert podman.podman("exec", replica, "id", "-u").strip() not in ("", "0")
    top = podman.podman("top", replica, "pid", "args")
    first = next(row for row in top.splitlines()[1:] if row.split()[0] == "1")
    assert "uvicorn gateway.app:app" in first and "--port 8000" in first, top
    alone = podman.podman(
        "run", "-d", "--rm", "-e", "PORT=9001", "-e", "REDIS_URL=", deployment.image
    ).strip()
    try:
        deadline = time.monotonic() + 30
        while not podman.succeeds("healthcheck", "run", alone):
            assert time.monotonic() < deadline, podman.podman("logs", alone, check=False)
            await anyio.sleep(0.5)
        top = podman.podman("top", alone, "pid", "args")
        assert "--port 9001" in top, top
    finally:
        podman.podman("rm", "-f", alone, check=False)


@in_containers
async def test_both_replicas_and_redis_are_healthy_and_the_proxy_speaks_http2(deployment):
    """Each replica's health check (its /readyz) passes, Redis's too; the proxy answers over HTTP/2."""
    for service in ("gateway-1", "gateway-2", "redis"):
        assert deployment.podman.succeeds("healthcheck", "run", deployment.container(service)), (
            service
        )
    async with deployment.http(timeout=10) as client:
        answer = await client.get("/readyz")
    assert (answer.status_code, answer.http_version, answer.text) == (200, "HTTP/2", "ready")


@in_containers
async def test_a_message_published_through_one_replica_reaches_every_transport_through_the_proxy(
    deployment, channel
):
    """SSE and polls over HTTP/2 and a WebSocket, all through the proxy, get what either replica took."""
    got: dict[str, list[str]] = {"sse": [], "websocket": [], "poll": []}
    subscribed = {name: anyio.Event() for name in got}
    versions: set[str] = set()

    async def sse(client: httpx.AsyncClient) -> None:
        async with client.stream("GET", f"/sse/{channel}") as response:
            versions.add(response.http_version)
            async for event in events(response):
                if event.event == ":":
                    subscribed["sse"].set()
                elif event.event == "message":
                    got["sse"].append(event.id)
                if len(got["sse"]) == 2:
                    return

    async def websocket() -> None:
        async with deployment.wss(f"/ws/{channel}") as sock:
            subscribed["websocket"].set()
            while len(got["websocket"]) < 2:
                got["websocket"].append(json.loads(await sock.recv())["id"])

    async def poll(client: httpx.AsyncClient) -> None:
        cursor = (await client.get(f"/poll/{channel}", params={"timeout": 0})).json()["cursor"]
        subscribed["poll"].set()
        while len(got["poll"]) < 2:
            answer = await client.get(f"/poll/{channel}", params={"since": cursor, "timeout": 10})
            versions.add(answer.http_version)
            got["poll"] += [m["id"] for m in answer.json()["messages"]]
            cursor = answer.json()["cursor"]

    async with deployment.http(timeout=30) as client, anyio.create_task_group() as tasks:
        tasks.start_soon(sse, client)
        tasks.start_soon(websocket)
        tasks.start_soon(poll, client)
        with anyio.fail_after(30):
            for event in subscribed.values():
                await event.wait()
            first = await anyio.to_thread.run_sync(
                deployment.publish_on, "gateway-1", channel, "one"
            )
            second = await anyio.to_thread.run_sync(
                deployment.publish_on, "gateway-2", channel, "two"
            )
        with anyio.fail_after(30):
            while any(len(ids) < 2 for ids in got.values()):
                await anyio.sleep(0.05)
    assert got == {name: [first, second] for name in got}
    assert versions == {"HTTP/2"}


@in_containers
async def test_the_proxy_spreads_clients_over_both_replicas(deployment, channel):
    """Six SSE streams through the proxy, without sticky sessions, land on both replicas."""
    streams = 6
    subscribed = 0
    before = {s: deployment.connections_on(s, "sse") for s in ("gateway-1", "gateway-2")}

    async def sse(client: httpx.AsyncClient) -> None:
        nonlocal subscribed
        async with client.stream("GET", f"/sse/{channel}") as response:
            async for event in events(response):
                if event.event == ":":
                    subscribed += 1
                    await anyio.sleep_forever()

    async with deployment.http(timeout=30) as client, anyio.create_task_group() as tasks:
        for _ in range(streams):
            tasks.start_soon(sse, client)
        with anyio.fail_after(30):
            while subscribed < streams:
                await anyio.sleep(0.05)
        opened = {
            s: await anyio.to_thread.run_sync(deployment.connections_on, s, "sse") - before[s]
            for s in before
        }
        tasks.cancel_scope.cancel()
    assert min(opened.values()) >= 2, f"round robin spread 6 streams as {opened}"


@in_containers
async def test_a_quiet_stream_and_a_long_poll_outlast_the_proxy(deployment, channel):
    """Heartbeats reach an idle SSE stream as they are sent; a poll waits its full timeout."""

    async def heartbeats(client: httpx.AsyncClient) -> list[float]:
        seen: list[float] = []
        async with client.stream("GET", f"/sse/{channel}") as response:
            async for event in events(response):
                if event.event == ":":
                    seen.append(time.monotonic())
                if len(seen) == 4:  # the subscribed comment, then heartbeats
                    return seen
        return seen

    async with deployment.http(timeout=60) as client:
        async with anyio.create_task_group() as tasks:
            result: dict[str, Any] = {}

            async def poll() -> None:
                started = time.monotonic()
                answer = await client.get(f"/poll/{channel}", params={"timeout": POLL_TIMEOUT_S})
                result["poll"] = (answer.status_code, answer.text, time.monotonic() - started)

            async def sse() -> None:
                result["sse"] = await heartbeats(client)

            tasks.start_soon(poll)
            tasks.start_soon(sse)
    status, body, waited = result["poll"]
    assert status == 200, f"the proxy cut a waiting poll: {status} {body}"
    assert json.loads(body)["messages"] == []
    assert waited >= POLL_TIMEOUT_S - 1
    gaps = [b - a for a, b in zip(result["sse"], result["sse"][1:], strict=False)]
    assert len(gaps) == 3 and all(gap < HEARTBEAT_S * 4 for gap in gaps), gaps


@in_containers
@pytest.mark.browser
@pytest.mark.parametrize("transport", ["websocket", "sse", "poll"])
def test_the_demo_page_in_chromium_through_the_proxy_over_http2(deployment, channel, transport):
    """Chromium loads the demo over HTTP/2 through the proxy and shows what each replica took."""
    errors: list[str] = []
    with sync_playwright() as playwright:
        # The certificate is from the proxy's local CA, which this Chromium does not
        # trust; Playwright's ignore_https_errors does not reach the WebSocket that
        # the client's SharedWorker opens, this flag does.
        args = [*CHROMIUM_ARGS, "--ignore-certificate-errors"]
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            context = browser.new_context()
            page = context.new_page()
            page.set_default_timeout(WAIT_MS)
            page.on("pageerror", lambda error: errors.append(str(error)))
            query = httpx.QueryParams(channel=channel, transport=transport, name="tester")
            page.goto(f"{deployment.url}/?{query}")
            wait_open(page, transport)
            protocol = page.evaluate(
                "() => performance.getEntriesByType('navigation')[0].nextHopProtocol"
            )
            ids = [
                deployment.publish_on("gateway-1", channel, "via one"),
                deployment.publish_on("gateway-2", channel, "via two"),
            ]
            shown = wait_rows(page, 2)
        finally:
            browser.close()
    assert protocol == "h2"
    assert [row["id"] for row in shown] == ids
    assert errors == []


@dataclass
class Moved(Follower):
    """A follower that also notes how its server let it go."""

    told_retry: int = 0
    close_codes: list[int] = field(default_factory=list)

    def take(self, message_id: str, event: str, data: str, channel: str) -> None:
        self.add({"id": message_id, "channel": channel, "event": event, "data": data})


async def follow_sse(client: httpx.AsyncClient, channel: str, reader: Moved, since: str) -> None:
    """As a browser's EventSource: the same URL again, with Last-Event-ID, after a drop."""
    headers: dict[str, str] = {}
    while True:
        try:
            async with client.stream(
                "GET", f"/sse/{channel}", params={"since": since}, headers=headers
            ) as response:
                if response.status_code == 200:
                    async for event in events(response):
                        if event.event == ":":
                            reader.ready.set()
                        elif event.event == "":
                            reader.told_retry += 1
                        elif event.event == "gap":
                            reader.add(dict(GAP))
                        else:
                            reader.take(event.id, event.event, event.data, channel)
        except httpx.HTTPError:
            pass
        reader.reconnects += 1
        if reader.cursor:
            headers["Last-Event-ID"] = reader.cursor
        await anyio.sleep(RETRY_PAUSE_S)


async def follow_ws(deployment: Deployment, channel: str, reader: Moved, since: str) -> None:
    reader.cursor = since
    while True:
        try:
            async with deployment.wss(f"/ws/{channel}?since={reader.cursor}") as sock:
                reader.ready.set()
                async for raw in sock:
                    frame = json.loads(raw)
                    if frame["type"] == "gap":
                        reader.add(dict(GAP))
                    elif frame["type"] == "message":
                        reader.take(frame["id"], frame["event"], frame["data"], channel)
        except websockets.ConnectionClosed as closed:
            if closed.rcvd is not None:
                reader.close_codes.append(closed.rcvd.code)
        except (OSError, websockets.WebSocketException):
            pass
        reader.reconnects += 1
        await anyio.sleep(RETRY_PAUSE_S)


async def follow_poll(client: httpx.AsyncClient, channel: str, reader: Moved, since: str) -> None:
    reader.cursor = since
    reader.ready.set()  # a poll carries its cursor: nothing is missed before the first
    while True:
        try:
            answer = await client.get(
                f"/poll/{channel}", params={"since": reader.cursor, "timeout": 5}
            )
            if answer.status_code == 200:
                body = answer.json()
                if body["gap"]:
                    reader.add(dict(GAP))
                for message in body["messages"]:
                    reader.add(message)
                reader.cursor = body["cursor"]
                continue
        except httpx.HTTPError:
            pass
        reader.reconnects += 1
        await anyio.sleep(RETRY_PAUSE_S)


@in_containers
async def test_stopping_a_replica_moves_its_clients_to_the_other_with_nothing_lost(
    deployment, channel
):
    """SIGTERM to one replica (compose stop): its SSE streams are told retry:, its WebSockets
    close 1012, and every client, resuming with its cursor through the proxy, gets every
    acknowledged message exactly once, in order; the replica drained before its grace ran out.
    """
    readers = {f"sse{n}": Moved() for n in range(4)} | {f"websocket{n}": Moved() for n in range(2)}
    readers |= {f"poll{n}": Moved() for n in range(2)}
    acked: list[str] = []
    no_replica: list[str] = []
    stopped: dict[str, float] = {}

    async def produce(client: httpx.AsyncClient) -> None:
        """Publish through the proxy (so through both replicas) until 30 acks after the stop."""
        after_stop = 0
        while after_stop < 30:
            try:
                answer = await client.post(f"/publish/{channel}", content=f"m{len(acked)}".encode())
                if answer.status_code == 201:
                    acked.append(answer.json()["id"])
                    after_stop += "took_s" in stopped
                elif answer.status_code == 503 and "uvicorn" not in answer.headers.get(
                    "server", ""
                ):
                    no_replica.append(answer.text)  # the proxy's own 503, not a draining gateway's
            except httpx.HTTPError:
                pass
            await anyio.sleep(0.02)

    def stop() -> None:
        stopped["at"] = time.monotonic()
        deployment.compose("stop", "gateway-2")
        stopped["took_s"] = time.monotonic() - stopped["at"]

    try:
        async with (
            deployment.http(timeout=30) as readers_client,
            deployment.http(timeout=30) as producer,
        ):
            start = await producer.post(f"/publish/{channel}", content=b"start")
            assert start.status_code == 201, start.text
            since = start.json()["id"]
            async with anyio.create_task_group() as tasks:
                # One at a time, so that round robin puts every other one on each replica.
                for name, reader in readers.items():
                    if name.startswith("sse"):
                        tasks.start_soon(follow_sse, readers_client, channel, reader, since)
                    elif name.startswith("websocket"):
                        tasks.start_soon(follow_ws, deployment, channel, reader, since)
                    else:
                        tasks.start_soon(follow_poll, readers_client, channel, reader, since)
                    with anyio.fail_after(15):
                        await reader.ready.wait()
                for transport in ("sse", "websocket"):
                    moving = await anyio.to_thread.run_sync(
                        deployment.connections_on, "gateway-2", transport
                    )
                    assert moving >= 1, f"round robin put no {transport} client on gateway-2"
                async with anyio.create_task_group() as production:
                    production.start_soon(produce, producer)
                    with anyio.fail_after(30):
                        while len(acked) < 40:
                            await anyio.sleep(0.01)
                    await anyio.to_thread.run_sync(stop)
                with anyio.fail_after(60):
                    while not all(reader.has(acked[-1]) for reader in readers.values()):
                        await anyio.sleep(0.05)
                tasks.cancel_scope.cancel()
        failures = []
        for name, reader in readers.items():
            try:
                assert_exactly_once_in_order(reader, acked)
            except AssertionError as failed:
                failures.append(f"{name}: {failed}\n  {what_differs(reader, Producer(acked))}")
        assert not failures, "\n".join(failures)
        # One replica was up throughout: a proxy that found none (a passive health
        # check counted a failed retry against the healthy one too) kept every
        # client waiting 10 s. The time each waited is recorded, not judged.
        assert not no_replica, f"the proxy had no replica {len(no_replica)} times: {no_replica[:1]}"
        record("container: compose stop gateway-2", dict(readers), stopped["at"])
        told = {name: r.told_retry for name, r in readers.items() if name.startswith("sse")}
        assert sum(1 for n in told.values() if n) >= 1, f"no SSE stream was told retry: {told}"
        codes = {name: r.close_codes for name, r in readers.items() if name.startswith("websocket")}
        assert any(1012 in c for c in codes.values()), f"no WebSocket closed 1012: {codes}"
        state = json.loads(deployment.podman.podman("inspect", deployment.container("gateway-2")))[
            0
        ]["State"]
        # 0 as PID 1 (the kernel ignores the SIGTERM uvicorn raises again), 143 under an
        # init; 137 would be SIGKILL at the end of stop_grace_period.
        assert state["ExitCode"] in (0, 143), f"the replica did not drain: {state['ExitCode']}"
        assert stopped["took_s"] < STOP_GRACE_S - 5, stopped
    finally:
        deployment.compose("start", "gateway-2")
