"""Flaky object storage: the local S3 server behind a proxy that drops connections, answers 500 and
503 and delays requests (tests.faults.flaky_s3). Extraction completes through the retries or stops
in one line and resumes; nothing is lost or duplicated; readers only ever see done shards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from email.message import Message

import pytest

from sact.common.claims import ClaimBook
from sact.extract.shard_writer import shard_topic
from sact.store.zarr_store import open_root
from tests.faults.flaky_s3 import FaultRates, FlakyS3Proxy
from tests.faults.s3 import make_bucket


@contextmanager
def through(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's S3 clients talk to ``endpoint`` in the block. fsspec keeps one filesystem
    per set of options, made from the environment when first used: it is dropped on both sides."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    with monkeypatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL", endpoint)
        yield
    s3fs.S3FileSystem.clear_instance_cache()


def test_a_claim_whose_answer_was_lost_is_still_this_runs(
    s3_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The claim's conditional PUT reaches S3, then the connection drops before the answer; the
    # client retries and meets its own claim (412). Before, the run took that for another run's
    # claim: it skipped the shard, named itself as the holder, and never released the claim.
    dropped: list[str] = []

    def first_claim_only(method: str, headers: Message) -> bool:
        first = method == "PUT" and headers.get("If-None-Match") == "*" and not dropped
        if first:
            dropped.append(method)
        return first

    bucket = make_bucket()
    proxy = FlakyS3Proxy(s3_server, FaultRates(drop_after=1.0), seed=0, only=first_claim_only)
    with proxy as endpoint, through(endpoint, monkeypatch):
        claims = ClaimBook(open_root(f"{bucket}/feats.zarr", mode="a"), "tiny")
        assert claims.try_claim(shard_topic(0))
        assert proxy.counts["drop_after"] == 1
        other = ClaimBook(open_root(f"{bucket}/feats.zarr", mode="a"), "tiny")
        assert not other.try_claim(shard_topic(0))
        assert other.holder_of(shard_topic(0)) == claims.run
        claims.release(shard_topic(0))
        assert other.holder_of(shard_topic(0)) is None
