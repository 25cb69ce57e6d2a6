"""Training data of the text-to-mel model: whole utterances with their transcripts, as
symbol ids and log-mels from the shared `MelSpectrogram`, in padded batches of similar length.

As for the vocoder, a batch is a pure function of (seed, epoch, position in the epoch), so
a resumed run sees exactly the data an unbroken one would.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from training.data import METADATA, AudioStore, Clip, Position, ResumableBatchSampler, clip_seconds
from vocoder.mel import MelConfig, MelSpectrogram
from vocoder.text.model import prepare_text
from vocoder.text.symbols import PAD_ID, TextError

log = logging.getLogger("training")


class Transcripts:
    """Symbol ids of clips' transcripts, from the `metadata.csv` beside the audio (or one
    level up, for LJSpeech's `wavs/`): the normalized column, else the raw one, through
    `prepare_text`. Clips without a transcript, or whose text cannot be spoken, get None
    and are remembered for `report`."""

    def __init__(self) -> None:
        self._tables: dict[Path, dict[str, str]] = {}
        self._ids: dict[Clip, tuple[int, ...] | None] = {}
        self.missing: list[Clip] = []
        self.unspeakable: list[tuple[Clip, str]] = []

    def _table(self, directory: Path) -> dict[str, str]:
        if directory not in self._tables:
            table = {}
            metadata = directory / METADATA
            if metadata.is_file():
                for line in metadata.read_text(encoding="utf-8").splitlines():
                    fields = [field.strip() for field in line.split("|")] + ["", ""]
                    text = fields[2] or fields[1]
                    if fields[0] and text:
                        table[fields[0]] = text
            self._tables[directory] = table
        return self._tables[directory]

    def ids(self, clip: Clip) -> tuple[int, ...] | None:
        if clip not in self._ids:
            self._ids[clip] = self._lookup(clip)
        return self._ids[clip]

    def _lookup(self, clip: Clip) -> tuple[int, ...] | None:
        tables = (self._table(directory) for directory in (clip.path.parent, clip.path.parent.parent))
        text = next((table[clip.clip_id] for table in tables if clip.clip_id in table), None)
        if text is None:
            self.missing.append(clip)
            return None
        try:
            return tuple(prepare_text(text)[1])
        except TextError as error:
            self.unspeakable.append((clip, str(error)))
            return None

    def report(self) -> None:
        if self.missing:
            log.info("left out %d clips without a transcript (e.g. %s)", len(self.missing),
                     ", ".join(c.clip_id for c in self.missing[:3]))
        if self.unspeakable:
            clip, reason = self.unspeakable[0]
            log.info("left out %d clips whose transcript cannot be spoken (e.g. %s: %s)", len(self.unspeakable),
                     clip.clip_id, reason)


@dataclass(frozen=True)
class Utterance:
    """A clip, the symbol ids of its transcript, and its length in mel frames (estimated
    from the file header, for bucketing)."""

    clip: Clip
    ids: tuple[int, ...]
    frames: int


def utterances(clips: list[Clip], transcripts: Transcripts, mel: MelConfig,
               n_squeeze: int) -> tuple[list[Utterance], float]:
    """Utterances of `clips` (which must have transcripts), leaving out those with fewer mel
    frames than tokens (broken transcripts) or too short to frame; and their total seconds."""
    kept, total = [], 0.0
    for clip in clips:
        ids = transcripts.ids(clip)
        assert ids is not None, "filter clips by their transcripts first"
        seconds = clip_seconds(clip)
        samples = int(seconds * mel.sample_rate)
        # One frame of slack: resampling may round the length either way.
        frames = mel.num_frames(samples)
        if samples >= mel.min_samples and (frames - 1) // n_squeeze * n_squeeze >= len(ids):
            kept.append(Utterance(clip, ids, frames))
            total += seconds
    if len(kept) < len(clips):
        log.info("left out %d clips with fewer mel frames than symbols", len(clips) - len(kept))
    return kept, total


class UtteranceDataset(Dataset):
    """Items `(ids (N,), log-mel (n_mels, T))`, keyed by `(epoch, index)` like the vocoder's
    segments; the epoch changes nothing, since whole utterances are never cropped. With
    `cache`, each mel is computed once and kept."""

    def __init__(self, items: list[Utterance], mel: MelConfig, cache: bool) -> None:
        self.utterances = items
        self.audio = AudioStore([u.clip for u in items], mel.sample_rate, cache=False)
        self.mel = MelSpectrogram(mel)
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.utterances)

    def mel_of(self, index: int) -> torch.Tensor:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        with torch.no_grad():
            mel = self.mel(torch.from_numpy(self.audio.load(index)))[0]
        if self._cache is not None:
            self._cache[index] = mel
        return mel

    def preload(self) -> None:
        """Compute every mel (before DataLoader workers fork, so they share them)."""
        for index in range(len(self)):
            self.mel_of(index)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        _, index = key
        return torch.tensor(self.utterances[index].ids), self.mel_of(index)


def collate(items: list[tuple[torch.Tensor, torch.Tensor]], silence: float) -> dict[str, torch.Tensor]:
    """The `TextToMel.loss` batch: ids padded with the pad id, mels with the log-mel of silence."""
    ids, mels = zip(*items)
    tokens = torch.full((len(ids), max(len(i) for i in ids)), PAD_ID, dtype=torch.long)
    padded = torch.full((len(mels), mels[0].shape[0], max(m.shape[1] for m in mels)), silence)
    for b, (item_ids, mel) in enumerate(items):
        tokens[b, : len(item_ids)] = item_ids
        padded[b, :, : mel.shape[1]] = mel
    return {"tokens": tokens, "token_lengths": torch.tensor([len(i) for i in ids]), "mels": padded,
            "mel_lengths": torch.tensor([m.shape[1] for m in mels])}


class BucketedBatchSampler(ResumableBatchSampler):
    """Resumable batches of utterances of similar length. Each epoch, a seeded shuffle is cut
    into pools of `pool_batches` global batches; each pool is sorted by length and cut into
    global batches, whose order is shuffled again. Rank r takes the r-th share of every
    global batch, so all ranks step on utterances of similar length."""

    def __init__(self, lengths: list[int], pool_batches: int, seed: int, per_rank: int, world_size: int,
                 rank: int, start: Position) -> None:
        self.lengths = np.asarray(lengths)
        self.pool_batches = pool_batches
        super().__init__(len(lengths), seed, per_rank, world_size, rank, start)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        size = self.per_rank * self.world_size
        order = rng.permutation(self.num_clips)[: self.num_clips // size * size]
        batches = []
        for start in range(0, len(order), size * self.pool_batches):
            pool = order[start:start + size * self.pool_batches]
            pool = pool[np.argsort(self.lengths[pool], kind="stable")]
            batches += [pool[i:i + size] for i in range(0, len(pool), size)]
        share = slice(self.rank * self.per_rank, (self.rank + 1) * self.per_rank)
        return [batches[i][share].tolist() for i in rng.permutation(len(batches))]
