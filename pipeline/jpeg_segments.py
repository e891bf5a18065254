"""What a released JPEG may hold: pixel data and a fixed JFIF header, nothing else.

A raw image can carry personal data outside its pixels: a JPEG comment (COM), EXIF (with a thumbnail of the
picture), XMP, ICC profiles, Photoshop blocks (APP13), any other APPn segment, PNG text chunks that a decoder
turns into `comment`, bytes after the end of the image. `clean_jpeg` writes a JPEG from the pixels alone (a new
image with no `info`, every metadata argument given), so whatever the raw file held cannot reach the output.

`foreign_segments` walks every marker segment of a JPEG and names each one that is not on the allow-list:
    SOI, one APP0 "JFIF" header with no thumbnail (right after SOI), DQT, SOF0 or SOF2 (once), DHT, DRI,
    SOS followed by its entropy-coded data (RST0-7 and stuffed bytes inside it), EOI at the very end.
Anything else (COM, APP1-APP15, an APP0 of another kind or with a thumbnail, other frame types, bytes before SOI
or after EOI, a truncated segment) is a problem naming the segment and its byte offset. Standardise checks every
image it makes; `ham verify` (and so `ham tag`) checks every JPEG of a release.
"""
from __future__ import annotations

import io
import re
import struct

SOI, EOI, SOS, APP0, COM = 0xD8, 0xD9, 0xDA, 0xE0, 0xFE
# Segments with a length field whose content is only coding tables and frame geometry: no room for free text.
TABLES = {0xDB: "DQT", 0xC4: "DHT", 0xDD: "DRI"}
FRAMES = {0xC0: "SOF0", 0xC2: "SOF2"}  # baseline, progressive (Huffman)
JFIF_LENGTH = 16  # the APP0 JFIF segment with a 0x0 thumbnail: length field 2 + "JFIF\0" 5 + 9 bytes of fields
# In entropy-coded data 0xFF is followed by 0x00 (a stuffed byte), RST0-7 or another 0xFF (fill); any other byte
# after 0xFF is the next marker.
NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def marker_name(marker: int) -> str:
    if 0xE0 <= marker <= 0xEF:
        return f"APP{marker - 0xE0}"
    if 0xD0 <= marker <= 0xD7:
        return f"RST{marker - 0xD0}"
    if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
        return f"SOF{marker - 0xC0}"
    names = {SOI: "SOI", EOI: "EOI", SOS: "SOS", COM: "COM", 0xC8: "JPG", 0xCC: "DAC", 0xDC: "DNL", 0xDE: "DHP",
             0xDF: "EXP", 0x01: "TEM", **TABLES}
    return names.get(marker, f"JPG{marker - 0xF0}" if 0xF0 <= marker <= 0xFD else f"marker 0x{marker:02X}")


def segments(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, marker, length) of every marker segment, in order; length counts the marker's two bytes, the
    segment and, for SOS, the entropy-coded data after it. Raises ValueError where the structure breaks (no
    SOI, a truncated segment, no EOI); bytes after EOI are a last segment with marker -1."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("does not start with SOI (not a JPEG)")
    found, pos, size = [(0, SOI, 2)], 2, len(data)
    while True:
        start = pos
        if pos >= size or data[pos] != 0xFF:
            raise ValueError(f"no marker at byte {pos} (truncated, or bytes between segments)")
        while pos < size and data[pos] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos >= size:
            raise ValueError(f"truncated at byte {start}")
        marker = data[pos]
        pos += 1
        if marker == EOI:
            found.append((start, EOI, pos - start))
            if pos < size:
                found.append((pos, -1, size - pos))
            return found
        if marker in (0x00, 0x01, SOI) or 0xD0 <= marker <= 0xD7:  # no length field
            found.append((start, marker, pos - start))
            continue
        if pos + 2 > size:
            raise ValueError(f"{marker_name(marker)} at byte {start}: truncated")
        length = struct.unpack(">H", data[pos:pos + 2])[0]
        if length < 2 or pos + length > size:
            raise ValueError(f"{marker_name(marker)} at byte {start}: length {length} runs past the end")
        pos += length
        if marker == SOS:
            following = NEXT_MARKER.search(data, pos)
            if following is None:
                raise ValueError(f"SOS at byte {start}: entropy-coded data runs to the end (no EOI)")
            pos = following.start()
            while data[pos - 1] == 0xFF and pos - 1 > start:  # fill bytes belong to the next marker
                pos -= 1
        found.append((start, marker, pos - start))


def foreign_segments(data: bytes) -> list[str]:
    """Every reason `data` is not a JPEG of pixel data and the fixed JFIF header only; [] when it is."""
    try:
        found = segments(data)
    except ValueError as error:
        return [str(error)]
    problems, frames = [], 0
    for index, (offset, marker, length) in enumerate(found):
        where = f"at byte {offset}, {length} bytes"
        if marker == -1:
            problems.append(f"{length} bytes after EOI (byte {offset})")
        elif marker == APP0:
            payload = data[offset + 4:offset + length]
            if index != 1 or not payload.startswith(b"JFIF\x00") or length != JFIF_LENGTH + 2:
                kind = payload[:5].rstrip(b"\x00").decode("latin-1")
                problems.append(f"APP0 {kind!r} {where}: only one JFIF header without a thumbnail, right after "
                                f"SOI, is allowed")
        elif marker in FRAMES:
            frames += 1
            if frames > 1:
                problems.append(f"a second frame header {FRAMES[marker]} {where}")
        elif marker == SOI and index > 0:
            problems.append(f"SOI {where}: a second image inside the file")
        elif marker not in TABLES and marker not in (SOI, EOI, SOS):
            problems.append(f"{marker_name(marker)} segment {where}: not allowed in a released image")
    if found[1][1] != APP0:
        problems.append("no JFIF header right after SOI")
    if not frames:
        problems.append("no SOF0 or SOF2 frame header")
    return problems


def clean_jpeg(image, quality: int, density: int) -> bytes:
    """JPEG bytes of `image`'s pixels (8-bit RGB) and nothing else: a new image without `info` (Pillow's writer
    takes `comment` from `image.info` unless told otherwise: a raw JPEG's COM segment or a PNG `comment` chunk
    would come through), every metadata argument given empty, 4:4:4 chroma, baseline; checked with
    `foreign_segments` before it is returned."""
    from PIL import Image

    fresh = Image.frombytes("RGB", image.size, image.convert("RGB").tobytes())
    buffer = io.BytesIO()
    fresh.save(buffer, format="JPEG", quality=quality, subsampling=0, dpi=(density, density), comment=b"",
               exif=b"", icc_profile=None, xmp=None, extra=b"", progressive=False, optimize=False)
    data = buffer.getvalue()
    problems = foreign_segments(data)
    if problems:  # the writer changed under us: never let such bytes out
        raise ValueError(f"the JPEG writer produced {problems[0]}")
    return data
