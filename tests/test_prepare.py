"""Tests of `vocoder prepare ljspeech`: download, resume, checksum, safe unpacking and
filelists, against a fake LJSpeech-1.1 archive served from a local HTTP server."""
from __future__ import annotations

import hashlib
import io
import random
import re
import tarfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile

from training.filelists import (
    HELD_OUT_IDS,
    DatasetError,
    is_held_out,
    read_filelist,
    split_ids,
)
from training.prepare import ARCHIVE_NAME, DATASET_NAME, extract_dataset, main

IDS = [f"LJ001-{n:04d}" for n in (1, 2, 3, *range(25, 33))] + [f"LJ002-{n:04d}" for n in range(1, 5)]


def write_fake_ljspeech(root: Path) -> Path:
    """A tiny LJSpeech-1.1 directory: metadata.csv and one short wav per id."""
    dataset = root / DATASET_NAME
    (dataset / "wavs").mkdir(parents=True)
    lines = []
    for number, utterance_id in enumerate(IDS):
        tone = 0.1 * np.sin(np.arange(256) * (number + 1) / 10).astype(np.float32)
        soundfile.write(str(dataset / "wavs" / f"{utterance_id}.wav"), tone, 22050, subtype="PCM_16")
        lines.append(f"{utterance_id}|Text {number}, \"quoted\".|Text {number}, \"quoted\".")
    (dataset / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dataset


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    root = tmp_path_factory.mktemp("source")
    dataset = write_fake_ljspeech(root)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:bz2") as tar:
        tar.add(dataset, arcname=DATASET_NAME)
    return buffer.getvalue()


@dataclass
class ServerState:
    """What the test server sends, and the Range header of every request it got."""

    payload: bytes
    honour_range: bool = True
    cut_first_response_at: int | None = None
    ranges: list[str | None] = field(default_factory=list)


class RangeHandler(BaseHTTPRequestHandler):
    """Serves `state.payload` at any path, with `bytes=N-` / `bytes=N-M` Range support."""

    def do_GET(self) -> None:
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        requested = self.headers.get("Range")
        state.ranges.append(requested)
        data, size = state.payload, len(state.payload)
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", requested or "")
        if match and state.honour_range:
            start = int(match[1])
            end = int(match[2]) if match[2] else size - 1
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = data[start : end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{size}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if state.cut_first_response_at is not None:
            # Simulate a dropped connection: promise the whole body, send only part of it.
            body, state.cut_first_response_at = body[: state.cut_first_response_at], None
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep pytest output clean


@pytest.fixture
def server(payload: bytes):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    httpd.state = ServerState(payload)  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/{ARCHIVE_NAME}"
    try:
        yield httpd.state, url  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_prepare(out: Path, filelists: Path, url: str, checksum: str, *extra: str) -> int:
    return main(["ljspeech", "--out", str(out), "--filelists", str(filelists), "--url", url,
                 "--sha256", checksum, "--timeout", "5", *extra])


def assert_prepared(out: Path, filelists: Path, payload: bytes) -> None:
    dataset = out / DATASET_NAME
    assert sorted(p.stem for p in (dataset / "wavs").glob("*.wav")) == sorted(IDS)
    assert (out / ARCHIVE_NAME).read_bytes() == payload
    assert {p.name for p in out.iterdir()} == {ARCHIVE_NAME, DATASET_NAME}  # no .part, no staging
    assert_filelists(filelists)


def assert_filelists(filelists: Path) -> None:
    listed = {name: read_filelist(filelists / f"{name}.txt") for name in ("train", "val", "test")}
    assert sorted(sum(listed.values(), [])) == sorted(IDS)
    assert HELD_OUT_IDS <= set(listed["test"])


def test_download_unpack_and_filelists_then_rerun_reuses(server, payload, tmp_path, capsys):
    state, url = server
    out, lists = tmp_path / "data", tmp_path / "lists"
    assert run_prepare(out, lists, url, sha256(payload)) == 0
    assert state.ranges == [None]
    assert_prepared(out, lists, payload)
    assert f"ready at {out / DATASET_NAME}" in capsys.readouterr().out

    assert run_prepare(out, lists, url, sha256(payload)) == 0
    assert state.ranges == [None]  # the unpacked dataset is reused without any request


def test_resumes_partial_download_with_range(server, payload, tmp_path):
    state, url = server
    out, lists = tmp_path / "data", tmp_path / "lists"
    out.mkdir()
    cut = len(payload) // 2
    (out / f"{ARCHIVE_NAME}.part").write_bytes(payload[:cut])
    assert run_prepare(out, lists, url, sha256(payload)) == 0
    assert state.ranges == [f"bytes={cut}-"]
    assert_prepared(out, lists, payload)


def test_complete_part_is_finished_on_416(server, payload, tmp_path):
    state, url = server
    out, lists = tmp_path / "data", tmp_path / "lists"
    out.mkdir()
    (out / f"{ARCHIVE_NAME}.part").write_bytes(payload)
    assert run_prepare(out, lists, url, sha256(payload)) == 0
    assert state.ranges == [f"bytes={len(payload)}-"]
    assert_prepared(out, lists, payload)


def test_server_ignoring_range_restarts_cleanly(server, payload, tmp_path):
    state, url = server
    state.honour_range = False
    out, lists = tmp_path / "data", tmp_path / "lists"
    out.mkdir()
    # Bytes that are not a prefix of the archive: appending the full body to them would fail the checksum.
    (out / f"{ARCHIVE_NAME}.part").write_bytes(b"x" * 100)
    assert run_prepare(out, lists, url, sha256(payload)) == 0
    assert state.ranges == ["bytes=100-"]
    assert_prepared(out, lists, payload)


def test_dropped_connection_keeps_part_and_rerun_resumes(server, payload, tmp_path, capsys):
    state, url = server
    state.cut_first_response_at = 500
    out, lists = tmp_path / "data", tmp_path / "lists"
    assert run_prepare(out, lists, url, sha256(payload)) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and "rerun to resume" in error
    assert (out / f"{ARCHIVE_NAME}.part").read_bytes() == payload[:500]

    assert run_prepare(out, lists, url, sha256(payload)) == 0
    assert state.ranges == [None, "bytes=500-"]
    assert_prepared(out, lists, payload)


def test_checksum_mismatch_is_one_clear_line_and_leaves_no_data(server, payload, tmp_path, capsys):
    _, url = server
    out, lists = tmp_path / "data", tmp_path / "lists"
    assert run_prepare(out, lists, url, "0" * 64) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ")
    assert f"SHA-256 is {sha256(payload)}, expected {'0' * 64}" in error
    assert list(out.iterdir()) == []  # bad download deleted, nothing unpacked
    assert not lists.exists()


def test_local_archive_is_verified_and_never_deleted(payload, tmp_path, capsys):
    archive = tmp_path / "copy.tar.bz2"
    archive.write_bytes(payload)
    out, lists = tmp_path / "data", tmp_path / "lists"
    base = ["ljspeech", "--out", str(out), "--filelists", str(lists), "--archive", str(archive)]
    assert main([*base, "--sha256", "f" * 64]) == 1
    assert "SHA-256" in capsys.readouterr().err
    assert archive.read_bytes() == payload
    assert not (out / DATASET_NAME).exists()

    assert main([*base, "--no-verify"]) == 0
    assert sorted(p.stem for p in (out / DATASET_NAME / "wavs").glob("*.wav")) == sorted(IDS)
    assert_filelists(lists)


def test_existing_directory_is_used_in_place(tmp_path, capsys):
    dataset = write_fake_ljspeech(tmp_path / "elsewhere")
    lists = tmp_path / "lists"
    assert main(["ljspeech", "--existing", str(dataset), "--filelists", str(lists)]) == 0
    assert_filelists(lists)
    assert f"ready at {dataset}" in capsys.readouterr().out

    (dataset / "wavs" / "LJ002-0003.wav").unlink()
    assert main(["ljspeech", "--existing", str(dataset), "--filelists", str(lists)]) == 1
    assert "1 missing (first: LJ002-0003.wav)" in capsys.readouterr().err
    assert main(["ljspeech", "--existing", str(tmp_path), "--filelists", str(lists)]) == 1
    assert "metadata.csv" in capsys.readouterr().err


def test_archive_escaping_its_directory_is_refused(tmp_path):
    archive = tmp_path / "evil.tar.bz2"
    with tarfile.open(archive, mode="w:bz2") as tar:
        for name in (f"{DATASET_NAME}/metadata.csv", "../escaped.txt"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"x|y"))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DatasetError, match="could not unpack"):
        extract_dataset(archive, out)
    assert not (tmp_path / "escaped.txt").exists()
    assert list(out.iterdir()) == []


def test_splits_are_deterministic_and_held_out_clips_only_in_test():
    ids = [f"LJ{chapter:03d}-{n:04d}" for chapter in range(1, 51) for n in range(1, 263)]
    shuffled = random.Random(0).sample(ids, len(ids))
    splits = split_ids(ids)
    assert split_ids(shuffled) == splits
    assert HELD_OUT_IDS == {f"LJ001-{n:04d}" for n in range(25, 33)}
    assert HELD_OUT_IDS <= set(splits.test)
    assert not HELD_OUT_IDS & (set(splits.train) | set(splits.val))
    assert is_held_out("LJ001-0025") and is_held_out("LJ001-0032")
    assert not is_held_out("LJ001-0024") and not is_held_out("LJ001-0033")
    assert sorted(splits.train + splits.val + splits.test) == sorted(ids)
    for part in (splits.val, splits.test):
        assert 0.005 < len(part) / len(ids) < 0.02


@pytest.mark.parametrize(
    "argv",
    [
        ["ljspeech"],
        ["ljspeech", "--out", "d", "--sha256", "abc"],
        ["ljspeech", "--existing", "d", "--out", "d"],
        ["ljspeech", "--out", "d", "--archive", "a", "--existing", "d"],
        ["ljspeech", "--out", "d", "--timeout", "0"],
    ],
)
def test_usage_mistakes_exit_with_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err
