"""A real headless browser for tests: Debian's chromium, and a PNG reader for its screenshots.

Tests call `chromium()`: it skips them with the reason when the browser is missing,
except under CI (the CI variable set), where a missing browser fails them: CI installs
it (.ci/run) and must not skip silently.
"""

from __future__ import annotations

import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tests.tools import required

INSTALL_HINT = "apt-get install --no-install-recommends chromium (Debian), as .ci/run does"
RUN_TIMEOUT = 120.0  # a cold start on a busy machine takes seconds
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def chromium() -> str:
    """The path of the chromium binary; skips, or fails under CI."""
    return required("chromium", hint=INSTALL_HINT, tests="browser")


def headless(url: str, profile: Path, *args: str) -> str:
    """Run chromium on `url` with a fresh profile directory and `args`; its stdout."""
    command = [chromium(), *FLAGS, f"--user-data-dir={profile}", *args, url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    if done.returncode != 0:
        raise AssertionError(f"chromium exited with {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


@dataclass(frozen=True)
class Image:
    """Decoded pixels: (height, width, channels) of uint8, RGB or RGBA."""

    pixels: npt.NDArray[np.uint8]

    def count(self, colour: str, tolerance: int = 2) -> int:
        """Pixels within `tolerance` of `colour` (#rrggbb) in every channel."""
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
        diff = np.abs(self.pixels[:, :, :3].astype(np.int16) - rgb)
        return int((diff <= tolerance).all(axis=2).sum())


def read_png(path: Path) -> Image:
    """An 8-bit RGB or RGBA, non-interlaced PNG (what chromium writes)."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG file")
    at, idat = 8, []
    width = height = channels = 0
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        at += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if depth != 8 or colour not in (2, 6) or interlace:
                raise ValueError(f"{path}: depth {depth}, colour type {colour}: not supported")
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    pixels = np.zeros((height, stride), dtype=np.uint8)
    previous = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], np.frombuffer(raw, np.uint8, stride, start + 1)
        row = _unfilter(kind, line, previous, channels)
        pixels[y] = row
        previous = row
    return Image(pixels.reshape(height, width, channels))


def _unfilter(
    kind: int, line: npt.NDArray[np.uint8], up: npt.NDArray[np.uint8], bpp: int
) -> npt.NDArray[np.uint8]:
    """One scanline's bytes from its filtered bytes and the line above (PNG spec 9.2)."""
    if kind == 0:  # None
        return line.copy()
    if kind == 1:  # Sub: a running sum per channel, modulo 256
        return np.cumsum(line.reshape(-1, bpp), axis=0, dtype=np.uint8).ravel()
    if kind == 2:  # Up
        return line + up
    out = bytearray(line.tobytes())
    above = up.tobytes()
    n = len(out)
    if kind == 3:  # Average
        for i in range(n):
            left = out[i - bpp] if i >= bpp else 0
            out[i] = (out[i] + ((left + above[i]) >> 1)) & 0xFF
    elif kind == 4:  # Paeth
        for i in range(n):
            a = out[i - bpp] if i >= bpp else 0
            b = above[i]
            c = above[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            predictor = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            out[i] = (out[i] + predictor) & 0xFF
    else:
        raise ValueError(f"unknown PNG filter type {kind}")
    return np.frombuffer(bytes(out), np.uint8)
