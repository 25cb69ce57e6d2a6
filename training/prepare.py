"""`vocoder prepare ljspeech`: fetch LJSpeech-1.1 (or take a local copy), unpack it
safely and write the deterministic train/val/test filelists for the trainer."""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from training.download import download, verify_sha256
from training.filelists import DatasetError, Splits, read_metadata, split_ids, write_filelists
from vocoder.errors import VocoderError

LJSPEECH_URL = "https://data.keithito.com/data/speech/LJSpeech-1.1.tar.bz2"
LJSPEECH_SHA256 = "be1a30453f28eb8dd26af4101ae40cbf2c50413b1bb21936cbcdc6fae3de8aa5"
DATASET_NAME = "LJSpeech-1.1"
ARCHIVE_NAME = f"{DATASET_NAME}.tar.bz2"
DEFAULT_FILELISTS = Path("recipes/ljspeech/filelists")
_STAGING_PREFIX = f".{DATASET_NAME}.extract-"


@dataclass(frozen=True)
class PrepareConfig:
    """What `prepare` works from and where it writes.

    `out` is None only with `existing`; `sha256` is None when verification is off.
    `archive` and `existing` are alternatives to downloading from `url`.
    """

    out: Path | None
    filelists: Path = DEFAULT_FILELISTS
    url: str = LJSPEECH_URL
    sha256: str | None = LJSPEECH_SHA256
    archive: Path | None = None
    existing: Path | None = None
    timeout: float = 60.0

    def __post_init__(self) -> None:
        if (self.out is None) == (self.existing is None):
            raise ValueError("PrepareConfig needs exactly one of out and existing")
        if self.archive is not None and self.existing is not None:
            raise ValueError("PrepareConfig takes archive or existing, not both")


def extract_dataset(archive: Path, out: Path) -> Path:
    """Unpack `archive` so that `out/LJSpeech-1.1` appears complete or not at all.

    Members are unpacked into a hidden sibling directory with tarfile's "data" filter
    (no paths outside it, no device files or unsafe links), the result is checked, and
    only then renamed into place; a failure removes the sibling.
    """
    # A run killed mid-extraction leaves its staging directory behind; it holds nothing usable.
    for stale in out.glob(f"{_STAGING_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=out))
    try:
        _unpack(archive, staging)
        unpacked = staging / DATASET_NAME
        if not (unpacked / "metadata.csv").is_file():
            raise DatasetError(f"{archive}: expected {DATASET_NAME}/metadata.csv inside, found none")
        read_metadata(unpacked)
        target = out / DATASET_NAME
        os.rename(unpacked, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _unpack(archive: Path, staging: Path) -> None:
    size = archive.stat().st_size
    try:
        with archive.open("rb") as raw, tarfile.open(fileobj=raw, mode="r:bz2") as tar, tqdm(
            total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=f"unpacking {archive.name}"
        ) as bar:
            for member in tar:
                tar.extract(member, staging, filter="data")
                # Progress follows the compressed bytes read, the only size known up front.
                bar.update(raw.tell() - bar.n)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DatasetError(f"{archive}: could not unpack as tar.bz2 ({error})") from None


def obtain_dataset(config: PrepareConfig) -> Path:
    """Directory of the unpacked dataset: existing, unpacked earlier, or fetched and unpacked now."""
    if config.existing is not None:
        return config.existing
    assert config.out is not None  # __post_init__: out is set whenever existing is not
    target = config.out / DATASET_NAME
    if target.exists():
        if not (target / "metadata.csv").is_file():
            raise DatasetError(f"{target}: exists without metadata.csv; remove it to unpack again")
        # Extraction renames into place only after success, so an existing target is complete.
        print(f"{target} is already unpacked; using it")
        return target
    if config.archive is not None:
        if not config.archive.is_file():
            raise DatasetError(f"--archive {config.archive}: no such file (expected the {ARCHIVE_NAME})")
        config.out.mkdir(parents=True, exist_ok=True)
        archive = config.archive
        if config.sha256 is not None:
            verify_sha256(archive, config.sha256)
    else:
        config.out.mkdir(parents=True, exist_ok=True)
        archive = download(config.url, config.out / ARCHIVE_NAME, config.sha256, config.timeout)
    return extract_dataset(archive, config.out)


def prepare(config: PrepareConfig) -> tuple[Path, Splits]:
    """Make the dataset available and write its filelists; returns its directory and the splits."""
    dataset = obtain_dataset(config)
    splits = split_ids(read_metadata(dataset))
    write_filelists(splits, config.filelists)
    return dataset, splits


def _sha256_hex(value: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise argparse.ArgumentTypeError(f"expected 64 hex digits, got {value!r}")
    return value.lower()


def _positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value!r}")
    return seconds


def _build_parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """Parser for the words after `vocoder prepare`, and its `ljspeech` subparser."""
    parser = argparse.ArgumentParser(
        prog="vocoder prepare", description="Download and prepare a training dataset."
    )
    datasets = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    lj = datasets.add_parser(
        "ljspeech",
        help="LJSpeech-1.1 (single speaker, 22.05 kHz)",
        description="Download LJSpeech-1.1 (resumable, SHA-256 checked), unpack it into OUT/LJSpeech-1.1 "
        "and write train.txt/val.txt/test.txt (one utterance id per line) into the filelists directory.",
    )
    lj.add_argument("--out", type=Path, metavar="DIR",
                    help="directory for the archive and the unpacked LJSpeech-1.1/ "
                    "(required unless --existing)")
    lj.add_argument("--filelists", type=Path, default=DEFAULT_FILELISTS, metavar="DIR",
                    help=f"where train.txt, val.txt and test.txt are written (default: {DEFAULT_FILELISTS})")
    source = lj.add_mutually_exclusive_group()
    source.add_argument("--url", default=LJSPEECH_URL,
                        help="download address, e.g. a mirror (default: the official one)")
    source.add_argument("--archive", type=Path, metavar="PATH",
                        help=f"use an already downloaded {ARCHIVE_NAME}")
    source.add_argument("--existing", type=Path, metavar="DIR",
                        help="use an already unpacked LJSpeech-1.1 directory "
                        "(metadata.csv and wavs/) where it is")
    check = lj.add_mutually_exclusive_group()
    check.add_argument("--sha256", type=_sha256_hex, metavar="HEX",
                       help="expected SHA-256 of the archive (default: the official LJSpeech-1.1 one)")
    check.add_argument("--no-verify", action="store_true", help="skip the archive checksum")
    lj.add_argument("--timeout", type=_positive_seconds, default=60.0, metavar="SECONDS",
                    help="network timeout for connecting and for each read (default: 60)")
    return parser, lj


def parse_args(argv: list[str]) -> PrepareConfig:
    """Turn command-line words into a config; usage mistakes exit through argparse."""
    parser, ljspeech = _build_parsers()
    args = parser.parse_args(argv)
    if args.existing is not None:
        # These options would be silently ignored with --existing, so they are refused instead.
        if args.out is not None:
            ljspeech.error("--out has no effect with --existing (the dataset is used where it is)")
        if args.sha256 is not None or args.no_verify:
            ljspeech.error("--sha256/--no-verify check an archive; --existing has none")
    elif args.out is None:
        ljspeech.error("--out DIR is required (or give --existing DIR)")
    return PrepareConfig(
        out=args.out,
        filelists=args.filelists,
        url=args.url,
        sha256=None if args.no_verify else (args.sha256 or LJSPEECH_SHA256),
        archive=args.archive,
        existing=args.existing,
        timeout=args.timeout,
    )


def main(argv: list[str]) -> int:
    """Entry point of `vocoder prepare`; `argv` excludes the word `prepare`."""
    config = parse_args(argv)
    try:
        dataset, splits = prepare(config)
    except (VocoderError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    print(f"{DATASET_NAME} ready at {dataset}")
    print(
        f"filelists in {config.filelists}: train {len(splits.train)}, "
        f"val {len(splits.val)}, test {len(splits.test)} utterances"
    )
    return 0
