"""A real local Redis Cluster for tests and benchmarks: 3 primaries, 3 replicas.

Six ``redis-server`` processes on free loopback ports (each also needs its
port + 10000 free, the cluster bus; both below the ephemeral range), joined
by ``redis-cli --cluster create``.
``python -m tests.cluster`` starts one and prints its URL until interrupted.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from tests.servers import RedisServer, free_port, wait_until

NODE_TIMEOUT_MS = 2000


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _ephemeral_low() -> int:
    """The first port the kernel hands to outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_handed_out: set[int] = set()


def _cluster_port() -> int:
    """A port whose bus port (+ 10000) is free too, both below the ephemeral range.

    There no outgoing connection (ours are many) can take either between
    this check and redis-server's bind, or while a stopped node waits to
    come back on its port. Nodes are all created before any starts, so a
    port handed out in this process is never handed out again.
    """
    top = _ephemeral_low() - 10000
    if top - 1024 < 1000:  # no room below the ephemeral range: take what comes
        return free_port()
    while True:
        port = random.randrange(max(1024, top - 10000), top)
        if port not in _handed_out and _free(port) and _free(port + 10000):
            _handed_out.add(port)
            return port


class ClusterNode(RedisServer):
    """One redis-server with ``cluster-enabled yes``; its bus on port + 10000."""

    def __init__(self, *, appendonly: bool = False) -> None:
        super().__init__(appendonly=appendonly)
        self.move()

    def move(self) -> None:
        self.port = _cluster_port()

    def start(self) -> ClusterNode:
        self.extra_args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            f"{self.dir}/nodes.conf",
            "--cluster-node-timeout",
            str(NODE_TIMEOUT_MS),
            "--repl-diskless-sync-delay",
            "0",
            "--repl-diskless-sync",
            "yes",
        ]
        super().start()
        return self

    def cli(self, *args: str, check: bool = True) -> str:
        return subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, check=check
        ).stdout.strip()

    def info(self, section: str) -> dict[str, str]:
        """``INFO section``, or ``CLUSTER INFO`` for "cluster" (where ``cluster_state`` is)."""
        command = ("CLUSTER", "INFO") if section == "cluster" else ("INFO", section)
        lines = self.cli(*command).splitlines()
        return dict(line.split(":", 1) for line in lines if ":" in line)

    @property
    def node_id(self) -> str:
        return self.cli("CLUSTER", "MYID")

    @property
    def is_primary(self) -> bool:
        return self.info("replication").get("role") == "master"


class RedisCluster:
    """``primaries`` shards with ``replicas`` replicas each, on loopback."""

    def __init__(self, primaries: int = 3, replicas: int = 1, *, appendonly: bool = False) -> None:
        assert shutil.which("redis-cli")
        self.nodes = [
            ClusterNode(appendonly=appendonly) for _ in range(primaries * (1 + replicas))
        ]
        self.primaries_count = primaries
        self.replicas = replicas

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> RedisCluster:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        if self.primaries_count == 1 and self.replicas == 0:
            self.nodes[0].cli("CLUSTER", "ADDSLOTSRANGE", "0", "16383")
        else:
            replicas = ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
            subprocess.run(
                ["redis-cli", "--cluster", "create", *addresses, *replicas],
                capture_output=True,
                text=True,
                check=True,
            )
        self.wait_ok()
        return self

    def wait_ok(self, timeout: float = 30) -> None:
        """Every live node says ``cluster_state:ok`` and agrees on who the primaries are."""

        def settled() -> bool:
            live = [node for node in self.nodes if node.proc is not None]
            if any(node.info("cluster").get("cluster_state") != "ok" for node in live):
                return False
            views = {tuple(sorted(self._primaries_seen_by(node))) for node in live}
            replicas_synced = all(
                node.is_primary or node.info("replication").get("master_link_status") == "up"
                for node in live
            )
            return len(views) == 1 and replicas_synced

        wait_until(settled, timeout, interval=0.1)

    def _primaries_seen_by(self, node: ClusterNode) -> list[str]:
        seen = []
        for line in node.cli("CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "master" in fields[2] and "fail" not in fields[2] and len(fields) > 8:
                seen.append(fields[1].split("@")[0])
        return seen

    def primaries(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.proc is not None and n.is_primary]

    def by_port(self, port: int) -> ClusterNode:
        return next(node for node in self.nodes if node.port == port)

    def owner_of(self, key: str) -> ClusterNode:
        """The primary that serves ``key``'s slot now."""
        return self._owner_by_slot(self.slot_of(key))

    def slot_of(self, key: str) -> int:
        return int(self.nodes[0].cli("CLUSTER", "KEYSLOT", key))

    def _owner_by_slot(self, slot: int) -> ClusterNode:
        for node in self.primaries():
            for line in node.cli("CLUSTER", "NODES").splitlines():
                fields = line.split()
                if "myself" not in fields[2]:
                    continue
                for part in fields[8:]:
                    if part.startswith("["):
                        continue
                    low, _, high = part.partition("-")
                    if int(low) <= slot <= int(high or low):
                        return node
        raise RuntimeError(f"no primary serves slot {slot}")

    def replica_of(self, primary: ClusterNode) -> ClusterNode:
        wanted = primary.node_id
        for node in self.nodes:
            if node.proc is not None and node is not primary:
                if node.info("replication").get("role") == "slave":
                    nodes = node.cli("CLUSTER", "NODES").splitlines()
                    line = next(entry for entry in nodes if "myself" in entry)
                    if line.split()[3] == wanted:
                        return node
        raise RuntimeError("that primary has no replica")

    def close(self) -> None:
        for node in self.nodes:
            node.close()


def migrate_slot(cluster: RedisCluster, slot: int, target: ClusterNode) -> None:
    """Move one slot and its keys to ``target`` the way ``redis-cli --cluster reshard`` does."""
    source = cluster._owner_by_slot(slot)
    assert source is not target
    source_id, target_id = source.node_id, target.node_id
    target.cli("CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id)
    source.cli("CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id)
    while True:
        keys = source.cli("CLUSTER", "GETKEYSINSLOT", str(slot), "100").split()
        if not keys:
            break
        source.cli("MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000", "KEYS", *keys)
    for node in (target, source, *[n for n in cluster.primaries() if n not in (source, target)]):
        node.cli("CLUSTER", "SETSLOT", str(slot), "NODE", target_id)


def redis_cli(node: RedisServer, *args: str) -> str:
    return subprocess.run(
        ["redis-cli", "-p", str(node.port), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def main(argv: Sequence[str] = ()) -> None:
    cluster = RedisCluster().start()
    print(cluster.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
