"""The bzip2 decoders behind frames.decompress_file give the same bytes and the same errors."""

from __future__ import annotations

import bz2
import io

import numpy as np
import pytest

from ssl_photoz.surveys.sdss.frames import BZIP2_DECODERS, decoder_available, decompress_file

DECODERS = [d for d in BZIP2_DECODERS if decoder_available(d)]


@pytest.fixture(scope="module")
def plain() -> bytes:
    rng = np.random.default_rng(0)
    # Noisy floats, like a frame: several 900 kB bzip2 blocks.
    return rng.normal(0, 1, 700_000).astype(">f4").tobytes()


def decoded(tmp_path, data: bytes, decoder: str) -> bytes:
    src = tmp_path / "x.bz2"
    src.write_bytes(data)
    out = io.BytesIO()
    decompress_file(src, out, decoder)
    return out.getvalue()


@pytest.mark.parametrize("decoder", DECODERS)
def test_decoders_agree_on_single_and_multi_stream_files(tmp_path, plain, decoder):
    one = bz2.compress(plain)
    assert decoded(tmp_path, one, decoder) == plain
    assert decoded(tmp_path, one + bz2.compress(b"tail"), decoder) == plain + b"tail"  # pbzip2


@pytest.mark.parametrize("decoder", DECODERS)
def test_decoders_reject_truncated_and_foreign_data(tmp_path, plain, decoder):
    whole = bz2.compress(plain)
    with pytest.raises(EOFError):
        decoded(tmp_path, whole[: len(whole) // 2], decoder)
    with pytest.raises((OSError, EOFError)):
        decoded(tmp_path, b"not bzip2 at all" * 100, decoder)
    damaged = bytearray(whole)
    damaged[len(damaged) // 3] ^= 0xFF
    with pytest.raises((OSError, EOFError)):
        decoded(tmp_path, bytes(damaged), decoder)


def test_unknown_decoder_is_refused():
    with pytest.raises(ValueError, match="bzip2 decoder"):
        decoder_available("gzip")
