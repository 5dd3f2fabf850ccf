"""Few-shot episodes: which videos of a split form each N-way K-shot Q-query task.

A split part (train, val or test) becomes a `VideoPool`: its usable videos in the feature store,
grouped by class. An `Episode` picks N classes of the pool and K + Q videos of each. Episodes are a
pure function of (pool videos, N, K, Q, seed): the pool is ordered by (class, video id), never by
store order, and every draw comes from one `np.random.Generator`. Two stores that hold the same
videos (say, two backbones) therefore give the same episodes, and an episode file written from one
can be read against the other: files name videos by id, not by store index.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sact.common.errors import SactError
from sact.common.files import read_versioned_json, write_text_atomic
from sact.data.split_lists import (
    SPLIT_PARTS,
    SPLIT_RECORD,
    SplitEntry,
    SplitError,
    SplitRecord,
    load_split,
)
from sact.store.backends import FeatureSet

EPISODE_FILE_FORMAT = 1
# Without a split list the store's classes are divided like the SSv2 OTAM split (64/12/24 of 100).
LABEL_SPLIT_FRACTIONS = {"train": 0.64, "val": 0.12, "test": 0.24}
LABEL_SPLIT_SEED = 0


class EpisodeError(SactError):
    """Episodes that cannot be drawn or read as asked; the message is one line for the user."""


@dataclass(frozen=True)
class SplitSource:
    """Where a split's parts came from: a split list (name or folder), the split the store
    recorded, or the store's labels."""

    parts: dict[str, list[SplitEntry]]
    description: str  # e.g. "ssv2_OTAM", or "store labels (classes split 64/12/24, seed 0)"
    name: str | None  # what --split names again, or None for the store's labels
    note: str | None = None  # a warning for the user: lists that differ from the recorded ones


def split_by_labels(feature_set: FeatureSet) -> dict[str, list[SplitEntry]]:
    """Divide the store's classes into train/val/test by a seeded permutation of their names.

    Classes, not videos, are divided: few-shot test classes are never seen in training.
    """
    entries = [
        SplitEntry(label=label, video_id=video_id)
        for label, video_id in zip(feature_set.labels, feature_set.video_ids, strict=True)
        if label
    ]
    classes = sorted({entry.label for entry in entries})
    if len(classes) < len(SPLIT_PARTS):
        raise EpisodeError(
            f"feature set {feature_set.name} has {len(classes)} labelled classes and no split; "
            "pass --split NAME|DIR (a split list) or extract videos in class folders"
        )
    order = np.random.default_rng(LABEL_SPLIT_SEED).permutation(len(classes))
    n_val = max(1, round(len(classes) * LABEL_SPLIT_FRACTIONS["val"]))
    n_test = max(1, round(len(classes) * LABEL_SPLIT_FRACTIONS["test"]))
    n_train = len(classes) - n_val - n_test
    assigned = {}
    for position, class_index in enumerate(order):
        part = "train" if position < n_train else "val" if position < n_train + n_val else "test"
        assigned[classes[class_index]] = part
    parts: dict[str, list[SplitEntry]] = {part: [] for part in SPLIT_PARTS}
    for entry in entries:
        parts[assigned[entry.label]].append(entry)
    return parts


def recorded_split(feature_set: FeatureSet) -> SplitRecord | None:
    """The split `sact extract --split` recorded in the feature set, if it recorded one."""
    raw = feature_set.attrs.get(SPLIT_RECORD)
    where = f"feature set {feature_set.name} of {feature_set.location}"
    return None if raw is None else SplitRecord.from_json(raw, where=where)


def from_record(record: SplitRecord, feature_set: FeatureSet, note: str | None) -> SplitSource:
    """The recorded split's parts: its video ids, in the classes the store holds them in (a
    video the store lacks counts as missing whatever its class)."""
    label_of = dict(zip(feature_set.video_ids, feature_set.labels, strict=True))
    parts = {
        part: [
            SplitEntry(label=label_of.get(video_id, ""), video_id=video_id, where=f"{part} list")
            for video_id in video_ids
        ]
        for part, video_ids in record.video_ids.items()
    }
    description = f"{record.location} ({record.format}, as recorded in the store)"
    return SplitSource(parts=parts, description=description, name=record.location, note=note)


def resolve_split(feature_set: FeatureSet, split: str | None) -> SplitSource:
    """`split` if given, else the split stage 1 recorded, else the store's own labels.

    The recorded split (``SplitRecord``) holds each part's video ids, so it is used from any
    folder, even once its lists are gone; `split` naming its location where the lists are gone
    (a checkpoint's split, on another machine) is the recorded split too. Lists that differ from
    the recorded ones (edited, or another split) are used as asked, with a note saying so.
    """
    record = recorded_split(feature_set)
    where = f"feature set {feature_set.name} of {feature_set.location}"
    if split:
        try:
            loaded = load_split(split)
        except SplitError:
            if record is not None and split == record.location:
                return from_record(record, feature_set, note=None)
            raise
        note = None
        if record is not None and record.differs_from(loaded):
            note = (
                f"the lists of split {loaded.location} differ from those {where} was extracted "
                f"with ({record.location}); using {loaded.location}"
            )
        return SplitSource(
            parts=loaded.parts,
            description=f"{loaded.location} ({loaded.format.name})",
            name=loaded.location,
            note=note,
        )
    if record is not None:
        note = None
        try:
            changed = record.differs_from(load_split(record.location))
        except SplitError:  # the lists are gone or unreadable here: the record is enough
            changed = False
        if changed:
            note = (
                f"the lists in {record.location} changed since {where} was extracted; using the "
                f"split recorded in the store (--split {record.location} uses the lists as they "
                "are now)"
            )
        return from_record(record, feature_set, note=note)
    stored = feature_set.attrs.get("split")
    if stored:  # a store from before the split record: the split as `sact extract` was given it
        try:
            loaded = load_split(str(stored))
        except SplitError as error:
            raise EpisodeError(
                f"{error} (the split {where} records, as given to `sact extract --split` in the "
                "folder it ran in); pass --split NAME|DIR to say where its lists are"
            ) from error
        return SplitSource(
            parts=loaded.parts,
            description=f"{loaded.location} ({loaded.format.name})",
            name=loaded.location,
        )
    fractions = "/".join(str(round(100 * f)) for f in LABEL_SPLIT_FRACTIONS.values())
    return SplitSource(
        parts=split_by_labels(feature_set),
        description=f"store labels (classes split {fractions}, seed {LABEL_SPLIT_SEED})",
        name=None,
    )


@dataclass(frozen=True)
class VideoPool:
    """The usable videos of one split part, ordered by (class, video id).

    `store_indices[i]` is where video i sits in the feature set; `by_class[c]` lists the pool
    positions of class `classes[c]`. `missing` counts split videos absent from the store, `unusable`
    those present but failed or not extracted yet.
    """

    part: str
    video_ids: list[str]
    labels: list[str]
    store_indices: np.ndarray  # (V,) int64
    classes: list[str]
    by_class: list[np.ndarray]
    missing: int = 0
    unusable: int = 0
    pending: int = 0  # of the unusable, those not extracted yet (the others failed)
    position_of: dict[str, int] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.video_ids)

    def summary(self) -> str:
        skipped = []
        if self.missing:
            skipped.append(f"{self.missing} not in the store")
        if self.unusable:
            skipped.append(f"{self.unusable} failed or not extracted")
        text = f"{self.part}: {len(self)} videos in {len(self.classes)} classes"
        return text + (f" (skipped {', '.join(skipped)})" if skipped else "")

    def unfinished(self) -> str | None:
        """One line when the store's extraction of this part is not finished, else None."""
        if not self.pending:
            return None
        in_store = len(self.video_ids) + self.unusable
        return (
            f"the extraction is not finished: {in_store - self.pending} of {in_store} "
            f"{self.part} videos done (run the same `sact extract` command again to finish it: "
            "it resumes)"
        )


def build_pool(feature_set: FeatureSet, source: SplitSource, part: str) -> VideoPool:
    """Match a split part's videos against the store; failed and pending videos are skipped."""
    if part not in source.parts:
        raise EpisodeError(f"split {source.description} has no {part} list")
    entries = source.parts[part]
    index_of = feature_set.index_of()
    usable = feature_set.usable
    present = [entry for entry in entries if entry.video_id in index_of]
    missing = len(entries) - len(present)
    if not present:
        raise EpisodeError(
            f"none of the {len(entries)} videos of {source.description} {part} is in feature set "
            f"{feature_set.name} ({feature_set.location}); is it the store of this split?"
        )
    kept = sorted(
        {(e.label, e.video_id) for e in present if usable[index_of[e.video_id]]},
    )
    unusable = len(present) - len(kept)
    pending = len({e.video_id for e in present if not feature_set.done[index_of[e.video_id]]})
    classes = sorted({label for label, _ in kept})
    class_number = {name: number for number, name in enumerate(classes)}
    labels = [label for label, _ in kept]
    video_ids = [video_id for _, video_id in kept]
    label_numbers = np.array([class_number[label] for label in labels], dtype=np.int64)
    return VideoPool(
        part=part,
        video_ids=video_ids,
        labels=labels,
        store_indices=np.array([index_of[v] for v in video_ids], dtype=np.int64),
        classes=classes,
        by_class=[np.flatnonzero(label_numbers == c) for c in range(len(classes))],
        missing=missing,
        unusable=unusable,
        pending=pending,
        position_of={video_id: position for position, video_id in enumerate(video_ids)},
    )


@dataclass(frozen=True)
class Episode:
    """One N-way K-shot Q-query task, as pool positions, class-major.

    Support video j has label j // K, query video j has label j // Q; `classes` holds the pool's
    class numbers in label order.
    """

    classes: np.ndarray  # (N,) class numbers in the pool
    support: np.ndarray  # (N*K,) pool positions
    query: np.ndarray  # (N*Q,) pool positions

    @property
    def way(self) -> int:
        return len(self.classes)

    @property
    def shot(self) -> int:
        return len(self.support) // self.way

    @property
    def queries(self) -> int:
        return len(self.query) // self.way

    def support_labels(self) -> np.ndarray:
        return np.repeat(np.arange(self.way), self.shot)  # (N*K,)

    def query_labels(self) -> np.ndarray:
        return np.repeat(np.arange(self.way), self.queries)  # (N*Q,)


class EpisodeSampler:
    """Draws N-way K-shot Q-query episodes from a pool; classes with < K+Q videos are excluded."""

    def __init__(self, pool: VideoPool, *, way: int, shot: int, queries: int) -> None:
        if way < 2 or shot < 1 or queries < 1:
            raise EpisodeError(
                f"need way >= 2, shot >= 1, query >= 1; got {way}, {shot}, {queries}"
            )
        self.pool, self.way, self.shot, self.queries = pool, way, shot, queries
        needed = shot + queries
        sizes = [len(members) for members in pool.by_class]
        self.eligible = np.array([c for c, size in enumerate(sizes) if size >= needed])
        self.excluded = {pool.classes[c]: size for c, size in enumerate(sizes) if size < needed}
        if len(pool.classes) < way:
            raise EpisodeError(
                f"{way}-way episodes need {way} classes; {pool.part} has {len(pool.classes)}"
            )
        if len(self.eligible) < way:
            few = ", ".join(f"{name} ({size})" for name, size in sorted(self.excluded.items())[:5])
            raise EpisodeError(
                f"{way}-way {shot}-shot with {queries} queries needs {way} classes with at least "
                f"shot + query = {needed} videos; {pool.part} has {len(self.eligible)} "
                f"(too few videos: {few}{', ...' if len(self.excluded) > 5 else ''})"
            )

    def exclusion_note(self) -> str | None:
        if not self.excluded:
            return None
        return (
            f"{len(self.excluded)} {self.pool.part} classes have fewer than shot + query = "
            f"{self.shot + self.queries} videos and are left out: "
            + ", ".join(sorted(self.excluded)[:5])
            + (", ..." if len(self.excluded) > 5 else "")
        )

    def sample(self, rng: np.random.Generator) -> Episode:
        classes = rng.choice(self.eligible, size=self.way, replace=False)
        support, query = [], []
        for c in classes:
            members = self.pool.by_class[c]
            chosen = members[rng.choice(len(members), size=self.shot + self.queries, replace=False)]
            support.append(chosen[: self.shot])
            query.append(chosen[self.shot :])
        return Episode(
            classes=classes, support=np.concatenate(support), query=np.concatenate(query)
        )

    def episodes(self, count: int, seed: int) -> list[Episode]:
        """`count` episodes, a pure function of (pool videos, N, K, Q, seed)."""
        rng = np.random.default_rng(seed)
        return [self.sample(rng) for _ in range(count)]


# ---- episode files ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EpisodeSet:
    """The episodes of one shot setting, by video id: what an episode file holds for it."""

    way: int
    shot: int
    queries: int
    episodes: list[Episode]


def episodes_to_json(pool: VideoPool, settings: Sequence[EpisodeSet], **info: Any) -> dict:
    return {
        "format": EPISODE_FILE_FORMAT,
        **info,
        "settings": [
            {
                "way": setting.way,
                "shot": setting.shot,
                "query": setting.queries,
                "episodes": [
                    {
                        "classes": [pool.classes[c] for c in episode.classes],
                        "support": [pool.video_ids[i] for i in episode.support],
                        "query": [pool.video_ids[i] for i in episode.query],
                    }
                    for episode in setting.episodes
                ],
            }
            for setting in settings
        ],
    }


def episodes_digest(pool: VideoPool, setting: EpisodeSet) -> str:
    """sha256 of a setting's episodes by class name and video id (what its episode file holds):
    the same episodes give the same digest whatever store or pool they were drawn from."""
    return setting_digest(episodes_to_json(pool, [setting])["settings"][0])


def setting_digest(content: dict[str, Any]) -> str:
    """`episodes_digest` of one setting as an episode file holds it: read from the file alone,
    without the store (a sweep tells which runs were evaluated on its episodes this way)."""
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def save_episodes(path: Path, pool: VideoPool, settings: Sequence[EpisodeSet], **info: Any) -> None:
    """Write episodes by video id, into a temporary file renamed into place (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(episodes_to_json(pool, settings, **info)))


def _positive_int(value: Any, what: str, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise EpisodeError(f"{where}: {what} must be a positive integer, got {value!r}")
    return value


def load_episodes(path: Path, pool: VideoPool) -> list[EpisodeSet]:
    """Read an episode file against a pool; every video and class is checked, nothing trusted."""
    where = str(path)
    data = read_versioned_json(
        path, what="episode file", version=EPISODE_FILE_FORMAT, error=EpisodeError
    )
    settings = data.get("settings")
    if not isinstance(settings, list) or not settings:
        raise EpisodeError(f"{where} holds no episode settings")
    class_number = {name: number for number, name in enumerate(pool.classes)}
    result = []
    for setting in settings:
        if not isinstance(setting, dict) or not isinstance(setting.get("episodes"), list):
            raise EpisodeError(f"{where}: malformed setting")
        way = _positive_int(setting.get("way"), "way", where)
        shot = _positive_int(setting.get("shot"), "shot", where)
        queries = _positive_int(setting.get("query"), "query", where)
        episodes = []
        for number, raw in enumerate(setting["episodes"]):
            episodes.append(
                _episode_from_json(
                    raw, pool, class_number, (way, shot, queries), f"{where}#{number}"
                )
            )
        if not episodes:
            raise EpisodeError(f"{where}: the {way}-way {shot}-shot setting holds no episodes")
        result.append(EpisodeSet(way=way, shot=shot, queries=queries, episodes=episodes))
    return result


def _episode_from_json(
    raw: Any, pool: VideoPool, class_number: dict[str, int], shape: tuple[int, int, int], where: str
) -> Episode:
    """One episode of a file, by video id: supports and queries in any order, each video's class
    from the split; ``classes`` (the label order) is optional and then follows the supports."""
    way, shot, queries = shape
    if not isinstance(raw, dict):
        raise EpisodeError(f"{where}: malformed episode")
    support, query = raw.get("support"), raw.get("query")
    if not (isinstance(support, list) and isinstance(query, list)):
        raise EpisodeError(f"{where}: an episode needs support and query lists of video ids")
    if len(support) != way * shot or len(query) != way * queries:
        raise EpisodeError(f"{where}: not a {way}-way {shot}-shot {queries}-query episode")
    positions = []
    for video_id in support + query:
        position = pool.position_of.get(video_id) if isinstance(video_id, str) else None
        if position is None:
            raise EpisodeError(
                f"{where}: video {video_id!r} is not a usable {pool.part} video of this store"
            )
        positions.append(position)
    if len(set(positions)) != len(positions):
        raise EpisodeError(f"{where}: a video appears twice in the episode")
    support_positions, query_positions = positions[: way * shot], positions[way * shot :]
    names = raw.get("classes")
    if names is None:
        names = list(dict.fromkeys(pool.labels[p] for p in support_positions))
    if not isinstance(names, list) or len(names) != way or len(set(names)) != way:
        raise EpisodeError(f"{where}: classes must list the episode's {way} classes once each")
    unknown = [name for name in names if name not in class_number]
    if unknown:
        raise EpisodeError(f"{where}: class {unknown[0]!r} is not in the {pool.part} split")

    def class_major(chosen: list[int], per_class: int, role: str) -> np.ndarray:
        by_name = {name: [p for p in chosen if pool.labels[p] == name] for name in names}
        if any(len(videos) != per_class for videos in by_name.values()):
            raise EpisodeError(
                f"{where}: the {role} videos are not {per_class} of each of the episode's classes"
            )
        return np.array([p for name in names for p in by_name[name]], dtype=np.int64)

    return Episode(
        classes=np.array([class_number[name] for name in names], dtype=np.int64),
        support=class_major(support_positions, shot, "support"),
        query=class_major(query_positions, queries, "query"),
    )
