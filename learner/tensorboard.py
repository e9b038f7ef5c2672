"""TensorBoard event files without TensorFlow.

An event file is a sequence of TFRecords, each holding one serialized `Event`
protocol buffer (tensorboard/compat/proto/event.proto). Writing them through
torch.utils.tensorboard or tensorboard's own writer imports TensorFlow (seconds per
process, and TF belongs in replay/ only), so onramp frames the records itself using
the protos the tensorboard package ships.

TFRecord framing: uint64 length, uint32 masked crc32c(length), data, uint32 masked
crc32c(data); all little-endian.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from tensorboard.compat.proto import (
    event_pb2,
    summary_pb2,
    tensor_pb2,
    tensor_shape_pb2,
)
from tensorboard.plugins.text import metadata as text_metadata

_CRC_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return (
        header
        + struct.pack("<I", _masked_crc(header))
        + data
        + struct.pack("<I", _masked_crc(data))
    )


class SummaryWriter:
    """Scalar and text summaries into `logdir/events.out.tfevents.*`.

    Not thread-safe; one writer per process and role directory.

    A process that continues a role's curves (a resumed run, a restarted actor) passes
    `purge_step`: the new file starts with a `SessionLog.START` event at that step, and
    TensorBoard (like `read_scalars`) then drops the earlier files' events at steps >=
    purge_step, so the curves stay monotonic where the old process got further than
    its last checkpoint. File names sort after the folder's existing event files, the
    order TensorBoard reads them in.
    """

    def __init__(self, logdir: str | os.PathLike, flush_secs: float = 10.0,
                 purge_step: int | None = None):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        stamp = max([int(time.time())] + [_file_stamp(p) + 1 for p in _event_files(self.logdir)])
        name = f"events.out.tfevents.{stamp:010d}.{socket.gethostname()}.{os.getpid()}"
        self.path = self.logdir / name
        self._file = open(self.path, "ab")
        self._flush_secs = flush_secs
        self._last_flush = time.monotonic()
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
        if purge_step is not None:
            self._write(event_pb2.Event(
                wall_time=time.time(), step=int(purge_step),
                session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START),
            ))
            self.flush()

    def _write(self, event: event_pb2.Event) -> None:
        self._file.write(_record(event.SerializeToString()))
        if time.monotonic() - self._last_flush > self._flush_secs:
            self.flush()

    def scalar(self, tag: str, value: float, step: int) -> None:
        value = summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
        self._write(
            event_pb2.Event(
                wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=[value])
            )
        )

    def scalars(self, values: dict[str, float], step: int) -> None:
        summary = summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=t, simple_value=float(v)) for t, v in values.items()]
        )
        self._write(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

    def text(self, tag: str, markdown: str, step: int = 0) -> None:
        """A Markdown text summary (TensorBoard's Text tab renders tables)."""
        tensor = tensor_pb2.TensorProto(
            dtype=7,  # DT_STRING
            string_val=[markdown.encode()],
            tensor_shape=tensor_shape_pb2.TensorShapeProto(),
        )
        value = summary_pb2.Summary.Value(
            tag=tag, tensor=tensor, metadata=text_metadata.create_summary_metadata(display_name=tag, description="")
        )
        self._write(
            event_pb2.Event(
                wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=[value])
            )
        )

    def flush(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._last_flush = time.monotonic()

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            self._file.close()

    def __enter__(self) -> "SummaryWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NullWriter:
    """SummaryWriter's interface, writing nothing: data-parallel ranks other than 0."""

    def scalar(self, tag: str, value: float, step: int) -> None:
        pass

    def scalars(self, values: dict[str, float], step: int) -> None:
        pass

    def text(self, tag: str, markdown: str, step: int = 0) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def read_events(path: str | os.PathLike) -> Iterator[event_pb2.Event]:
    """Events of one file, checking each record's CRCs; a torn last record ends the file."""
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos + 12 <= len(data):
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        end = pos + 12 + length + 4
        if header_crc != _masked_crc(header) or end > len(data):
            return
        payload = data[pos + 12 : pos + 12 + length]
        (payload_crc,) = struct.unpack("<I", data[end - 4 : end])
        if payload_crc != _masked_crc(payload):
            return
        yield event_pb2.Event.FromString(payload)
        pos = end


def _event_files(logdir: Path) -> list[Path]:
    return sorted(logdir.glob("events.out.tfevents.*"))


def _file_stamp(path: Path) -> int:
    try:
        return int(path.name.split(".")[3])
    except (IndexError, ValueError):
        return 0


def read_scalars(logdir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Every scalar under `logdir` (recursively): tag -> [(step, value)] in file order.

    As in TensorBoard, each folder is one run, read file by file in name order, and a
    `SessionLog.START` event at step s drops that folder's earlier scalars at steps >= s.
    """
    scalars: dict[str, list[tuple[int, float]]] = {}
    folders = sorted({p.parent for p in Path(logdir).rglob("events.out.tfevents.*")})
    for folder in folders:
        run: dict[str, list[tuple[int, float]]] = {}
        for path in _event_files(folder):
            for event in read_events(path):
                if event.session_log.status == event_pb2.SessionLog.START:
                    run = {tag: [(s, v) for s, v in points if s < event.step]
                           for tag, points in run.items()}
                for value in event.summary.value:
                    if value.HasField("simple_value"):
                        run.setdefault(value.tag, []).append((event.step, value.simple_value))
        for tag, points in run.items():
            scalars.setdefault(tag, []).extend(points)
    return scalars


def read_text(logdir: str | os.PathLike) -> dict[str, str]:
    """Every text summary under `logdir`: tag -> the last Markdown written."""
    texts: dict[str, str] = {}
    for path in sorted(Path(logdir).rglob("events.out.tfevents.*")):
        for event in read_events(path):
            for value in event.summary.value:
                if value.HasField("tensor") and value.tensor.string_val:
                    texts[value.tag] = value.tensor.string_val[0].decode()
    return texts


def flatten(config, prefix: str = "") -> dict[str, object]:
    """A (nested) dataclass config as dotted field paths -> values, for `markdown_table`."""
    out: dict[str, object] = {}
    for f in fields(config):
        value = getattr(config, f.name)
        key = f"{prefix}{f.name}"
        if is_dataclass(value):
            out.update(flatten(value, key + "."))
        else:
            out[key] = value
    return out


def markdown_table(rows: dict[str, object]) -> str:
    """A two-column Markdown table, used for the resolved config at step 0."""
    lines = ["| field | value |", "|---|---|"]
    for key, value in rows.items():
        if isinstance(value, float):
            value = np.format_float_positional(value, trim="-")
        lines.append(f"| {key} | {str(value).replace('|', '/')} |")
    return "\n".join(lines)
