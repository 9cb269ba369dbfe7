"""Hostile and broken uploads, built in memory."""

from __future__ import annotations

import io
import stat
import struct
import zipfile
import zlib

from PIL import Image

from tests.conftest import synthetic_slice


def png(img: Image.Image | None = None, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    (img or synthetic_slice(seed % 3, seed)).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    synthetic_slice(seed % 3, seed, size=64).save(buf, format="JPEG")
    return buf.getvalue()


def animated_gif(frames: int = 3) -> bytes:
    """A stack of slices in one file: Pillow would quietly decode only the first."""
    buf = io.BytesIO()
    images = [synthetic_slice(k % 3, k) for k in range(frames)]
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:])
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming width x height, with no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")


def pixel_bomb(side: int) -> bytes:
    """A real side x side black PNG: a few kB on the wire, side² pixels once decoded."""
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def make_zip(members: dict[str, bytes], symlinks: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name in symlinks:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def zip_bomb(member_mb: int = 8) -> bytes:
    """One member of zeros that deflates about a thousandfold."""
    return make_zip({"slice.png": bytes(member_mb * 1024 * 1024)})
