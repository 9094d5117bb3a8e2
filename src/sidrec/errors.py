"""User-facing errors.

Every problem a user can fix (a missing file, a malformed line, an unknown config key, NaN embeddings, a wrong
argument to the Python API) raises :class:`SidrecError`. The CLI turns it into one line on stderr and exit code 2
without a traceback, so a user sees *what* is wrong and *where*, not our call stack.
"""

from __future__ import annotations

from pathlib import Path

_NEWLINE = b"\n"


class SidrecError(ValueError):
    """An error caused by input the user controls; reported as one line, exit code 2.

    Why a ``ValueError``: to Python code calling the API a wrong argument or a malformed file *is* a bad value, and
    code written against the standard exceptions (``except ValueError``) keeps working.
    """


def input_error(path: str | Path, message: str, line: int | None = None) -> SidrecError:
    """Build an error that names the file (and line) at fault, the way every reader reports problems."""
    where = f"{path}:{line}" if line is not None else f"{path}"
    return SidrecError(f"{where}: {message}")


def not_utf8(path: str | Path, exc: UnicodeDecodeError, offset: int = 0, line: int | None = 1) -> SidrecError:
    """The one-line error for text that is not UTF-8: the file, the byte offset and the line it is on.

    ``exc.object`` is the chunk that failed to decode, ``offset`` where that chunk starts in the file and ``line``
    the line it starts on (None: unknown). Why the offset and the line: 'not UTF-8' alone sends a user hunting
    through a million-line export for one stray Latin-1 byte.
    """
    data = bytes(exc.object)
    at = offset + exc.start
    where = f" (line {line + data[: exc.start].count(_NEWLINE)})" if line is not None else ""
    return SidrecError(f"{path}: not UTF-8 text at byte {at}{where}: {exc.reason} (0x{data[exc.start]:02x}); save "
                       "the file as UTF-8")


def read_utf8(path: str | Path) -> str:
    """The text of ``path``, which must be UTF-8 (a leading byte-order mark, as spreadsheets write, is dropped)."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise not_utf8(path, exc, offset=len(data) - len(exc.object)) from None


def check_utf8(path: str | Path, chunk: int = 1 << 20) -> None:
    """Raise :func:`not_utf8` (file, byte offset, line) unless all of ``path`` is UTF-8 (gzip read uncompressed).

    Why a separate pass: readers that decode in bulk (pyarrow, ``json.load``) report a bad byte without saying where,
    or not at all (pyarrow reads a text column with a Latin-1 byte as binary); this finds the first one, streaming,
    when a reader has said something is wrong.
    """
    import codecs
    import gzip

    p = Path(path)
    opener = gzip.open if p.name.lower().endswith(".gz") else open
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line = 0, 1
    with opener(p, "rb") as fh:
        while True:
            data = fh.read(chunk)
            try:
                decoder.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                # the decoder keeps an incomplete sequence from the previous chunk: re-read this one with it
                pending = len(exc.object) - len(data)
                raise not_utf8(p, exc, offset - pending, line - bytes(exc.object[:pending]).count(_NEWLINE)) from None
            if not data:
                return
            offset += len(data)
            line += data.count(_NEWLINE)
