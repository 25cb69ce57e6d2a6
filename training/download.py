"""Resumable HTTP(S) download with SHA-256 verification (standard library plus tqdm).

Bytes go to `<dest>.part`, which a rerun resumes with an HTTP Range request; the file
is renamed to `dest` only once it is complete and, if a checksum is given, matches it.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from vocoder.errors import VocoderError

CHUNK_BYTES = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)")


class DownloadError(VocoderError):
    """A file could not be fetched: unreachable server, HTTP error or interrupted transfer."""


class ChecksumError(DownloadError):
    """A file's SHA-256 differs from the expected one."""


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks so multi-GB archives fit in memory."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    """Raise `ChecksumError` unless `path` hashes to `expected` (hex, any case)."""
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ChecksumError(f"{path}: SHA-256 is {actual}, expected {expected.lower()}")


def part_path(dest: Path) -> Path:
    """Where the unfinished download of `dest` is kept between runs."""
    return dest.with_name(dest.name + ".part")


def download(url: str, dest: Path, sha256: str | None, timeout: float = 60.0) -> Path:
    """Fetch `url` to `dest`, resuming `<dest>.part` if present; `sha256=None` skips the check.

    An existing `dest` is reused if it matches, and never deleted if it does not: it may be
    a copy the user put there. A fresh download that fails the check is deleted, because
    resuming on top of wrong bytes could never produce the right file.
    """
    if dest.exists():
        if sha256 is not None:
            try:
                verify_sha256(dest, sha256)
            except ChecksumError as error:
                raise ChecksumError(f"{error}; delete it to download again") from None
        return dest
    part = part_path(dest)
    _fetch(url, part, timeout)
    if sha256 is not None:
        try:
            verify_sha256(part, sha256)
        except ChecksumError as error:
            part.unlink()
            raise ChecksumError(
                f"{error}; deleted the download (wrong --sha256, or a corrupt copy from {url})"
            ) from None
    os.replace(part, dest)
    return dest


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """`(first byte, total size)` of a Content-Range header; None for parts it leaves out."""
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    if match is None:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total and total != "*" else None)


def _fetch(url: str, part: Path, timeout: float) -> None:
    """Bring `part` to the full content of `url`, appending when the server honours Range."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            _, total = _parse_content_range(error.headers.get("Content-Range"))
            if total == offset:
                return  # an earlier run got every byte but stopped before the rename
            part.unlink()  # the part is larger than the file: it cannot be resumed
            return _fetch(url, part, timeout)
        raise DownloadError(f"{url}: server answered HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(f"could not reach {url}: {reason}") from None

    with response:
        if response.status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                raise DownloadError(f"{url}: asked to resume at byte {offset}, server sent byte {start}")
            mode = "ab"
        else:
            # The server ignored Range and sends the whole file, so the part starts over.
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        try:
            with part.open(mode) as file, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
            ) as bar:
                while chunk := response.read(CHUNK_BYTES):
                    file.write(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as error:
            got = part.stat().st_size if part.exists() else 0
            raise DownloadError(
                f"download of {url} stopped at {got} bytes ({type(error).__name__}: {error}); rerun to resume"
            ) from None
    size = part.stat().st_size
    if total is not None and size != total:
        raise DownloadError(f"{url}: connection closed after {size} of {total} bytes; rerun to resume")
