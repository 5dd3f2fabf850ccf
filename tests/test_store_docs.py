"""docs/STORE.md's xarray example runs as written, on a store with a failed and a pending video."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from sact.store.backends import open_feature_set
from sact.testing.stores import video_id, write_synthetic_store

STORE_DOC = Path(__file__).resolve().parents[1] / "docs" / "STORE.md"
DEMO_STORE = "sact-demo/motion/feats.zarr"


def section_code(heading: str) -> str:
    """The first python block under ``heading`` in docs/STORE.md."""
    text = STORE_DOC.read_text(encoding="utf-8")
    section = text.split(f"\n{heading}\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, heading
    return match.group(1)


def test_xarray_example_reads_a_feature_set_with_named_dims(tmp_path: Path) -> None:
    failed = [video_id("class_001", 2)]
    location = write_synthetic_store(
        tmp_path / "feats.zarr",
        name="demo",
        classes=3,
        videos_per_class=4,
        shard_size=4,
        failed=failed,
        pending_shards=[2],  # class_002's four videos: not extracted yet
    )
    code = section_code("## Reading a feature set with xarray")
    assert DEMO_STORE in code
    names: dict = {}
    exec(compile(code.replace(DEMO_STORE, location), str(STORE_DOC), "exec"), names)

    reference = open_feature_set(location, "demo")
    rows = np.flatnonzero(reference.usable)
    features = names["features"]
    assert features.dims == ("video", "frame", "patch", "channel")
    assert list(features["video"].values) == [reference.video_ids[i] for i in rows]
    assert len(rows) == 7 and failed[0] not in features["video"].values
    np.testing.assert_array_equal(features.values, reference.read(rows))
    height, width = reference.grid
    assert names["on_grid"].shape == (reference.frames, height, width, reference.dim)
    np.testing.assert_array_equal(
        names["on_grid"].reshape(reference.frames, -1, reference.dim), reference.read(rows[:1])[0]
    )
    assert names["class_means"].dims == ("label", "frame", "channel")
    assert list(names["class_means"]["label"].values) == ["class_000", "class_001"]
