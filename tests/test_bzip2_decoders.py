"""The bzip2 decoders behind bzip2.decompress_file give the same bytes and the same errors."""

from __future__ import annotations

import bz2
import io

import numpy as np
import pytest

from ssl_photoz.surveys.sdss.bzip2 import BZIP2_DECODERS, decoder_available, decompress_file

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


def test_block_bound_counts_the_blocks_a_field_needs():
    """bench_bzip2_blocks' bound: header and trailing blocks always, the rows' blocks as drawn."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "bench_bzip2_blocks.py"
    spec = importlib.util.spec_from_file_location("bench_bzip2_blocks", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    header = 8640
    image_end = header + bench.N_ROWS * bench.ROW_BYTES
    starts = list(range(0, image_end, 900_000))  # the last block also holds the trailing HDUs
    size = image_end + 200_000
    crowded = bench.blocks_needed(starts, size, header, density=500, rows=120, trials=20)
    assert crowded == len(starts)  # a crowded field needs every block
    lone = bench.blocks_needed(starts, size, header, density=1e-9, rows=120, trials=400)
    assert 2 < lone < 5  # one object: its 1-2 blocks, the header's and the last
