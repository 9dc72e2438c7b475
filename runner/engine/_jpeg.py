"""A strict JPEG decode: libjpeg-turbo's warnings are errors, through its TurboJPEG API.

Pillow decodes JPEG with libjpeg but swallows its warnings: a file whose entropy-coded data
is damaged ("Corrupt JPEG data: premature end of data segment", "bad Huffman code",
"extraneous bytes before marker") decodes without an error, its lower half grey or shifted,
while djpeg and browsers report it. `strict_jpeg_problem` decodes every scan with
`TJFLAG_STOPONWARNING` (a warning stops the decode and is reported) and `TJFLAG_LIMITSCANS`
(a progressive file of more than 500 scans, a known CPU bomb, is refused), to one grey
channel, at 1/8 scale: the entropy decoding, where damage shows, is all done (every
coefficient of every block of every component), and the colour conversion, the chroma's
inverse DCT and all but the DC term of the luma's skipped. At 1024² the full-size grey decode
cost about half of Pillow's full decode; the 1/8-scale one costs about half of that again
(bench/image_micro.py). `jpeg_size` reads the header alone, for the size check before it.

The library is libturbojpeg (Debian: `libturbojpeg0`; macOS: Homebrew's `jpeg-turbo`),
loaded once with ctypes. Where it is absent, `available()` is False and the caller falls
back to Pillow's decode plus a structural check (docs/reliability.md says what that misses).
Blocking: run it in a worker thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

TJFLAG_STOPONWARNING = 8192
TJFLAG_LIMITSCANS = 32768
TJPF_GRAY = 6
_INT_P = ctypes.POINTER(ctypes.c_int)


@functools.cache
def _library() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("turbojpeg")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    lib.tjInitDecompress.restype = ctypes.c_void_p
    lib.tjInitDecompress.argtypes = []
    lib.tjDecompressHeader3.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_ulong,
        _INT_P,
        _INT_P,
        _INT_P,
        _INT_P,
    ]
    lib.tjDecompress2.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_ulong]
    lib.tjDecompress2.argtypes += [ctypes.c_void_p] + [ctypes.c_int] * 5
    lib.tjGetErrorStr2.argtypes = [ctypes.c_void_p]
    lib.tjGetErrorStr2.restype = ctypes.c_char_p
    lib.tjDestroy.argtypes = [ctypes.c_void_p]
    return lib


def available() -> bool:
    """Whether libturbojpeg can be loaded (the strict check runs)."""
    return _library() is not None


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """The width and height `data`'s JPEG header declares, or None when it has none we read.

    Reads the markers up to the first scan (no pixel is decoded). Raises RuntimeError when
    libturbojpeg is absent (check `available()` first).
    """
    lib = _library()
    if lib is None:
        raise RuntimeError("libturbojpeg is not installed")
    handle = lib.tjInitDecompress()
    if not handle:
        raise MemoryError("tjInitDecompress failed")
    try:
        w, h, sub, space = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        if lib.tjDecompressHeader3(handle, data, len(data), w, h, sub, space) != 0:
            return None
        # A header cut short before its frame can "succeed" with a size of 0 x 0.
        return (w.value, h.value) if w.value > 0 and h.value > 0 else None
    finally:
        lib.tjDestroy(handle)


def strict_jpeg_problem(data: bytes, *, scale: int = 8) -> str | None:
    """None when `data` decodes as a JPEG without an error or a warning; else what libjpeg said.

    `scale` 8 decodes at 1/8 size: libjpeg still Huffman-decodes every coefficient of every
    block (the entropy-coded data is read to its end; a bad code or a premature end is still
    a warning), and only the inverse DCT shrinks to each block's DC term. 1 is the full size.
    The caller has already read the header and checked the size (no bomb reaches here).
    Raises RuntimeError when libturbojpeg is absent (check `available()` first).
    """
    lib = _library()
    if lib is None:
        raise RuntimeError("libturbojpeg is not installed")
    handle = lib.tjInitDecompress()
    if not handle:
        raise MemoryError("tjInitDecompress failed")
    try:
        w, h, sub, space = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        args = (handle, data, len(data))
        if lib.tjDecompressHeader3(*args, w, h, sub, space) != 0:
            return _message(lib, handle)
        # tjDecompress2 picks the largest scaling factor whose output fits width x height.
        out_w, out_h = -(-w.value // scale), -(-h.value // scale)
        pixels = ctypes.create_string_buffer(max(1, out_w * out_h))
        flags = TJFLAG_STOPONWARNING | TJFLAG_LIMITSCANS
        if lib.tjDecompress2(*args, pixels, out_w, 0, out_h, TJPF_GRAY, flags) != 0:
            return _message(lib, handle)
        return None
    finally:
        lib.tjDestroy(handle)


def _message(lib: ctypes.CDLL, handle: int) -> str:
    raw: bytes | None = lib.tjGetErrorStr2(handle)
    return (raw or b"unknown libjpeg error").decode("utf-8", "replace")
