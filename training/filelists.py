"""Deterministic train/val/test splits of LJSpeech, written one utterance id per line.

A clip's split depends only on its id, never on file order: the first 8 bytes of the
SHA-256 of the id, modulo 100, put bucket 0 in test, bucket 1 in val and the rest in
train (about 1% / 1% / 98%). The project's held-out evaluation clips LJ001-0025 to
LJ001-0032 are always in test, and the trainer refuses them through `is_held_out`.
Lists hold ids, not paths, so they do not depend on where the dataset was unpacked:
the audio of id X is `<dataset>/wavs/X.wav`.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from vocoder.errors import VocoderError

HELD_OUT_IDS: frozenset[str] = frozenset(f"LJ001-{number:04d}" for number in range(25, 33))
SPLITS = ("train", "val", "test")
BUCKETS = 100
TEST_BUCKET = 0
VAL_BUCKET = 1


class DatasetError(VocoderError):
    """A dataset directory, archive or filelist is not in the expected LJSpeech layout."""


@dataclass(frozen=True)
class Splits:
    """Utterance ids of each split, sorted."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]


def is_held_out(utterance_id: str) -> bool:
    """True for the fixed evaluation clips that must never be trained on."""
    return utterance_id in HELD_OUT_IDS


def split_of(utterance_id: str) -> str:
    """Name of the split (`train`, `val` or `test`) that `utterance_id` belongs to."""
    if is_held_out(utterance_id):
        return "test"
    digest = hashlib.sha256(utterance_id.encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") % BUCKETS
    if bucket == TEST_BUCKET:
        return "test"
    if bucket == VAL_BUCKET:
        return "val"
    return "train"


def split_ids(ids: Iterable[str]) -> Splits:
    """Assign every id to its split; the result is independent of the order of `ids`."""
    members: dict[str, list[str]] = {name: [] for name in SPLITS}
    for utterance_id in sorted(set(ids)):
        members[split_of(utterance_id)].append(utterance_id)
    return Splits(**{name: tuple(found) for name, found in members.items()})


def read_metadata(dataset_dir: Path) -> list[str]:
    """Utterance ids of an LJSpeech directory (`metadata.csv` + `wavs/`), checking both exist."""
    metadata = dataset_dir / "metadata.csv"
    if not metadata.is_file():
        raise DatasetError(f"{dataset_dir}: expected an LJSpeech-1.1 directory with metadata.csv, found none")
    ids: list[str] = []
    seen: set[str] = set()
    for number, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != 3 or not fields[0]:
            raise DatasetError(f"{metadata}:{number}: expected 'id|text|normalized text', got {line[:80]!r}")
        if fields[0] in seen:
            raise DatasetError(f"{metadata}:{number}: expected unique ids, {fields[0]} appears again")
        seen.add(fields[0])
        ids.append(fields[0])
    if not ids:
        raise DatasetError(f"{metadata}: expected 'id|text|normalized text' lines, found none")
    missing = [i for i in ids if not (dataset_dir / "wavs" / f"{i}.wav").is_file()]
    if missing:
        raise DatasetError(
            f"{dataset_dir / 'wavs'}: expected a wav for every line of metadata.csv, "
            f"{len(missing)} missing (first: {missing[0]}.wav)"
        )
    return ids


def write_filelists(splits: Splits, out_dir: Path) -> dict[str, Path]:
    """Write `train.txt`, `val.txt` and `test.txt` into `out_dir`; each replaced atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in SPLITS:
        path = out_dir / f"{name}.txt"
        staging = path.with_name(path.name + ".tmp")
        staging.write_text("".join(f"{i}\n" for i in getattr(splits, name)), encoding="utf-8")
        os.replace(staging, path)
        written[name] = path
    return written


def read_filelist(path: Path) -> list[str]:
    """Utterance ids of a filelist written by `write_filelists`, in file order."""
    if not path.is_file():
        raise DatasetError(f"{path}: expected a filelist (one utterance id per line), found none")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
