"""The access registry and revocation records, without a server (gateway/access.py, revocations.py)."""

from __future__ import annotations

import time

import anyio
import pytest

from gateway.access import NO_GRANT, Access, Grant
from gateway.app import create_app
from gateway.auth import Rights
from gateway.errors import BadRequest, Forbidden
from gateway.revocations import Revocation, Revocations, revocation
from gateway.settings import Settings
from gateway.subscription import CloseReason


class Holder:
    def __init__(self) -> None:
        self.ends: list[tuple[CloseReason, str, tuple[str, ...] | None]] = []

    def access_ended(
        self, reason: CloseReason, note: str, patterns: tuple[str, ...] | None
    ) -> None:
        self.ends.append((reason, note, patterns))


def rights(exp: float | None, user: str | None = "ada", iat: float | None = 0.0) -> Rights:
    return Rights(sub=("*",), pub=(), expires_at=exp, user=user, issued_at=iat)


def test_a_grant_ends_in_the_sweep_of_its_exp_second_and_not_before():
    """Filed under ceil(exp): a sweep before it leaves it, the one at it ends it once."""
    access = Access(Revocations(60))
    holder = Holder()
    exp = time.time() + 10.2
    grant = access.watch(rights(exp), holder)
    assert isinstance(grant, Grant)
    access.expire(exp - 0.5)
    assert holder.ends == []
    access.expire(exp + 0.9)
    access.expire(exp + 5)
    assert holder.ends == [(CloseReason.EXPIRED, "token expired", None)]
    assert access.grants == 0


def test_no_token_no_grant_and_leaving_twice_counts_once():
    access = Access(Revocations(60))
    assert access.watch(rights(None), Holder()) is NO_GRANT
    grant = access.watch(rights(time.time() + 5), Holder())
    assert access.grants == 1
    with grant:
        pass
    grant.__exit__(None, None, None)
    assert access.grants == 0
    access.expire(time.time() + 10)


def test_a_renewed_grant_moves_to_its_new_exp():
    access = Access(Revocations(60))
    holder = Holder()
    grant = access.watch(rights(time.time() + 2), holder)
    assert isinstance(grant, Grant)
    grant.renew(rights(time.time() + 60, iat=time.time()))
    access.expire(time.time() + 5)
    assert holder.ends == []


def test_a_revocation_ends_older_tokens_of_its_user_only():
    """Ada's token from before it ends; her newer one, and bob's, do not."""
    access = Access(Revocations(60))
    old, new, bob = Holder(), Holder(), Holder()
    now = time.time()
    access.watch(rights(now + 60, iat=now - 10), old)
    access.watch(rights(now + 60, iat=now + 1), new)
    access.watch(rights(now + 60, user="bob", iat=now - 10), bob)
    access.revoke(Revocation("ada", None, "banned", now))
    access.revoke(Revocation("ada", None, "banned", now))  # heard twice (a backfill): once
    assert old.ends == [(CloseReason.REVOKED, "banned", None)]
    assert new.ends == [] and bob.ends == []


def test_revocations_refuse_older_tokens_for_what_they_cover_until_forgotten():
    records = Revocations(ttl_s=60)
    now = time.time()
    records.add(Revocation("ada", ("room:1*",), "no", now))
    with pytest.raises(Forbidden, match="revoked"):
        records.check(rights(None, iat=now - 1), ["room:12"])
    with pytest.raises(Forbidden):
        records.check(rights(None, iat=None), ["room:1"])  # no iat: before every revocation
    records.check(rights(None, iat=now - 1), ["room:2"])  # not covered
    records.check(rights(None, iat=now + 1), ["room:12"])  # issued after
    assert not records.add(Revocation("bob", None, "old", now - 61))  # past its ttl already


def test_a_revocation_body_is_checked():
    assert revocation({"user": "ada"}, at=5.0) == Revocation("ada", None, "revoked", 5.0)
    for bad in ([], {"user": ""}, {"user": "a", "channels": []}, {"user": "a", "reason": "x\ny"}):
        with pytest.raises(BadRequest):
            revocation(bad)


@pytest.mark.anyio
async def test_the_in_process_publisher_revokes_through_the_control_channel():
    """``create_app().publisher.disconnect``: heard back by the hub, ends the user's grant."""
    app = create_app(Settings(secret="x" * 32))
    async with app.running() as gateway:
        holder = Holder()
        now = time.time()
        grant = gateway.access.watch(rights(now + 60, iat=now - 1), holder)
        with grant:
            assert await app.publisher.disconnect("ada", ["room:*"], reason="gone")
            with anyio.fail_after(5):
                while not holder.ends:
                    await anyio.sleep(0.01)
        assert holder.ends == [(CloseReason.REVOKED, "gone", ("room:*",))]
        with pytest.raises(Forbidden, match="revoked"):
            gateway.guard.check_read(rights(now + 60, iat=now - 1), ["room:1"])
