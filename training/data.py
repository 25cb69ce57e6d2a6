"""Training data: find clips, split off validation, and serve fixed-length random segments.

A segment's offset is a pure function of (seed, epoch, clip index), and batches are keyed
by their position in the run, so a resumed run sees exactly the data an unbroken one would.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import soundfile
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from training.config import DataConfig
from training.filelists import DatasetError, is_held_out
from vocoder.audio import load_audio

log = logging.getLogger("training")

AUDIO_SUFFIXES = (".wav", ".flac")
METADATA = "metadata.csv"


@dataclass(frozen=True)
class Clip:
    """One utterance: its id, the dataset directory it came from, and its audio file."""

    clip_id: str
    source: str
    path: Path


def _metadata_ids(metadata: Path) -> list[str]:
    ids = []
    for number, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            clip_id = line.split("|", 1)[0].strip()
            if not clip_id:
                raise DatasetError(f"{metadata}:{number}: expected 'id|text|normalized text', got {line[:80]!r}")
            ids.append(clip_id)
    return ids


def dataset_clips(directory: Path) -> list[Clip]:
    """Clips of a dataset directory: ids from `metadata.csv`, audio `wavs/<id>.wav` (LJSpeech)
    or `<id>.wav` / `<id>.flac` beside the metadata."""
    clips = []
    for clip_id in _metadata_ids(directory / METADATA):
        candidates = [directory / "wavs" / f"{clip_id}{s}" for s in AUDIO_SUFFIXES]
        candidates += [directory / f"{clip_id}{s}" for s in AUDIO_SUFFIXES]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise DatasetError(f"{directory}: no audio for id {clip_id} (looked for wavs/{clip_id}.wav "
                               f"and {clip_id}.wav/.flac)")
        clips.append(Clip(clip_id, directory.name, found))
    return clips


def _filelist_entries(filelist: Path) -> list[str]:
    if not filelist.is_file():
        raise DatasetError(f"{filelist}: no such filelist (for LJSpeech, `vocoder prepare ljspeech --out DIR` "
                           f"writes recipes/ljspeech/filelists)")
    return [line.split("|", 1)[0].strip() for line in filelist.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def _entry_path(entry: str, filelist: Path) -> Path | None:
    """An entry that names an audio file (relative to the working or the filelist's directory)."""
    if not entry.lower().endswith(AUDIO_SUFFIXES):
        return None
    for candidate in (Path(entry), filelist.parent / entry):
        if candidate.is_file():
            return candidate
    raise DatasetError(f"{filelist}: audio file {entry} not found")


def path_filelist_clips(filelist: Path) -> list[Clip]:
    """Clips of a filelist whose lines are audio paths (NVIDIA style, `path` or `path|text`)."""
    clips = []
    for entry in _filelist_entries(filelist):
        path = _entry_path(entry, filelist)
        if path is None:
            raise DatasetError(f"{filelist}: line {entry!r} is not an audio path; a filelist of ids must be "
                               f"given as data.train_filelist / data.val_filelist next to a dataset in data.paths")
        clips.append(Clip(path.stem, filelist.stem, path))
    return clips


def discover(paths: list[str]) -> list[Clip]:
    """All clips under `paths` (datasets, parents of datasets, filelists of audio paths)."""
    if not paths:
        raise DatasetError("no training data: pass --data DIR (or set data.paths in the recipe)")
    clips: list[Clip] = []
    for text in paths:
        path = Path(text)
        if path.is_file():
            clips += path_filelist_clips(path)
        elif (path / METADATA).is_file():
            clips += dataset_clips(path)
        elif path.is_dir():
            children = sorted(p for p in path.iterdir() if (p / METADATA).is_file())
            if not children:
                raise DatasetError(f"{path}: neither a dataset (metadata.csv) nor a directory of datasets")
            for child in children:
                clips += dataset_clips(child)
        else:
            raise DatasetError(f"{path}: no such file or directory")
    return clips


def _select(entries: list[str], filelist: Path, clips: list[Clip]) -> list[Clip]:
    by_id: dict[str, list[Clip]] = {}
    for clip in clips:
        by_id.setdefault(clip.clip_id, []).append(clip)
    selected = []
    for entry in entries:
        path = _entry_path(entry, filelist)
        if path is not None:
            selected.append(Clip(path.stem, filelist.stem, path))
            continue
        matches = by_id.get(entry, [])
        if not matches:
            raise DatasetError(f"{filelist}: id {entry} is in none of the data paths")
        if len(matches) > 1:
            raise DatasetError(f"{filelist}: id {entry} is ambiguous, it is in "
                               f"{', '.join(sorted(c.source for c in matches))}")
        selected.append(matches[0])
    return selected


def _hash_order(clip: Clip) -> bytes:
    return hashlib.sha256(f"{clip.source}/{clip.clip_id}".encode("utf-8")).digest()


def split_clips(config: DataConfig, usable: Callable[[Clip], bool] | None = None) -> tuple[list[Clip], list[Clip]]:
    """(train, val) clips; the held-out evaluation clips are in neither.

    A train filelist naming a held-out clip is refused; held-out clips found in dataset
    directories are dropped with a log line. Without a val filelist, the `val_clips`
    clips that come first by SHA-256 of `source/id` are validation and never trained on.
    `usable` (e.g. "has a transcript") filters both sets, before validation clips are picked.
    """
    usable = usable or (lambda clip: True)
    found = discover(config.paths) if config.paths or not config.train_filelist else []
    if config.train_filelist:
        filelist = Path(config.train_filelist)
        train = _select(_filelist_entries(filelist), filelist, found)
        refused = sorted({c.clip_id for c in train if is_held_out(c.clip_id)})
        if refused:
            raise DatasetError(f"{filelist}: names held-out evaluation clips {', '.join(refused)}; "
                               f"they must never be trained on, remove them")
    else:
        train = found
    dropped = sorted({c.clip_id for c in train if is_held_out(c.clip_id)})
    if dropped:
        log.info("left out %d held-out evaluation clips (%s)", len(dropped), ", ".join(dropped))
    train = [c for c in train if not is_held_out(c.clip_id)]
    if config.val_filelist:
        filelist = Path(config.val_filelist)
        val = [c for c in _select(_filelist_entries(filelist), filelist, found)
               if not is_held_out(c.clip_id) and usable(c)]
        if config.val_clips:
            val = val[: config.val_clips]
    else:
        candidates = sorted((c for c in found if not is_held_out(c.clip_id) and usable(c)), key=_hash_order)
        # Keep most clips for training even on a tiny dataset.
        val = candidates[: min(config.val_clips, len(candidates) // 4)]
    val_paths = {c.path.resolve() for c in val}
    train = [c for c in train if c.path.resolve() not in val_paths and usable(c)]
    if not train:
        raise DatasetError("no training clips left after removing held-out and validation clips")
    return train, val


def clip_seconds(clip: Clip) -> float:
    """Duration of a clip, read from its file header."""
    try:
        return soundfile.info(str(clip.path)).duration
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise DatasetError(f"{clip.path}: not a readable audio file ({error})") from None


def drop_short(clips: list[Clip], min_seconds: float) -> tuple[list[Clip], float]:
    """Clips at least `min_seconds` long (read from file headers) and their total seconds."""
    kept, total = [], 0.0
    for clip in clips:
        seconds = clip_seconds(clip)
        if seconds >= min_seconds:
            kept.append(clip)
            total += seconds
    if len(kept) < len(clips):
        log.info("left out %d clips shorter than %.3f s", len(clips) - len(kept), min_seconds)
    return kept, total


class AudioStore:
    """Loads clips at the model's rate, keeping them in memory when `cache` is set."""

    def __init__(self, clips: list[Clip], sample_rate: int, cache: bool) -> None:
        self.clips = clips
        self.sample_rate = sample_rate
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.clips)

    def load(self, index: int) -> np.ndarray:
        """Mono float32 audio `(L,)` of clip `index`."""
        if self._cache is None:
            return load_audio(self.clips[index].path, self.sample_rate)
        if index not in self._cache:
            self._cache[index] = load_audio(self.clips[index].path, self.sample_rate)
        return self._cache[index]

    def preload(self) -> float:
        """Load every clip (before DataLoader workers fork, so they share it); returns seconds of audio."""
        return sum(self.load(i).shape[0] for i in range(len(self))) / self.sample_rate



class SegmentDataset(Dataset):
    """Random fixed-length segments; keys are `(epoch, clip index)` pairs.

    Item: audio `(segment_length,)` zero-padded past the clip's end, and its valid length
    in samples (a multiple of `n_group`). Given each clip's `pitch` (F0 without gaps and
    voicing at frames 0, hop, 2 hop...), also those of the segment's mel frames
    `(segment_length // hop + 1,)`, interpolated, the last frame held past the clip's end.
    """

    def __init__(self, store: AudioStore, segment_length: int, n_group: int, seed: int,
                 pitch: list[tuple[np.ndarray, np.ndarray]] | None = None, hop: int = 256) -> None:
        self.store = store
        self.segment_length = segment_length
        self.n_group = n_group
        self.seed = seed
        self.pitch = pitch
        self.hop = hop

    def __len__(self) -> int:
        return len(self.store)

    def offset(self, epoch: int, index: int, clip_length: int) -> int:
        spare = clip_length - self.segment_length
        if spare <= 0:
            return 0
        return int(np.random.default_rng([self.seed, epoch, index]).integers(0, spare + 1))

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, index = key
        audio = self.store.load(index)
        start = self.offset(epoch, index, audio.shape[0])
        piece = audio[start:start + self.segment_length]
        length = piece.shape[0] // self.n_group * self.n_group
        segment = np.zeros(self.segment_length, dtype=np.float32)
        segment[:length] = piece[:length]
        if self.pitch is None:
            return torch.from_numpy(segment), length
        positions = (start + self.hop * np.arange(self.segment_length // self.hop + 1)) / self.hop
        f0, voicing = (np.interp(positions, np.arange(track.shape[0]), track).astype(np.float32)
                       for track in self.pitch[index])
        return torch.from_numpy(segment), length, torch.from_numpy(f0), torch.from_numpy(voicing)


@dataclass
class Position:
    """Where the run is in the data: the next batch is batch `batch` of epoch `epoch`."""

    epoch: int = 0
    batch: int = 0


def epoch_batches(num_clips: int, epoch: int, seed: int, per_rank: int, world_size: int,
                  rank: int) -> list[list[int]]:
    """This rank's batches of clip indices for `epoch` (a seeded shuffle, shared by all ranks)."""
    sampler = DistributedSampler(range(num_clips), num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    indices = list(sampler)
    return [indices[i * per_rank:(i + 1) * per_rank] for i in range(len(indices) // per_rank)]


class ResumableBatchSampler(Sampler):
    """Endless batches of `(epoch, index)` keys, starting at a saved `Position`; every
    epoch has the same number of batches."""

    def __init__(self, num_clips: int, seed: int, per_rank: int, world_size: int, rank: int,
                 start: Position) -> None:
        self.num_clips, self.seed, self.per_rank = num_clips, seed, per_rank
        self.world_size, self.rank, self.start = world_size, rank, start
        self.batches_per_epoch = len(self.epoch_batches(0))
        if self.batches_per_epoch == 0:
            raise DatasetError(f"{num_clips} training clips are too few for a batch of {per_rank * world_size}; "
                               f"lower train.batch_size")

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of clip indices for `epoch`."""
        return epoch_batches(self.num_clips, epoch, self.seed, self.per_rank, self.world_size, self.rank)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, first = self.start.epoch, self.start.batch
        while True:
            batches = self.epoch_batches(epoch)
            for batch in batches[first:]:
                yield [(epoch, index) for index in batch]
            epoch, first = epoch + 1, 0

    def advance(self, position: Position) -> Position:
        """The position after consuming one more batch."""
        if position.batch + 1 >= self.batches_per_epoch:
            return Position(position.epoch + 1, 0)
        return Position(position.epoch, position.batch + 1)
