"""Frame sources: mock rendering, SAS download with its cache and faults, and frames on disk.

The SAS tests serve the bytes of real SDSS frames from a loopback server at their SAS paths; no
test talks to SDSS.
"""

from __future__ import annotations

import bz2
import hashlib
import logging
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from loopback_server import LoopbackServer, Reply, replies

from ssl_photoz.core.config import with_defaults
from ssl_photoz.surveys.sdss.frames import (
    CorruptFrameError,
    DirFrameSource,
    FrameDownloadError,
    FrameError,
    FrameNotFoundError,
    MockFrameSource,
    make_frame_source,
)
from ssl_photoz.surveys.sdss.refdata import FRAMES_4510_4_0030, real_path
from ssl_photoz.surveys.sdss.sas_frames import SAS_FRAME_PATHS, SasFrameSource
from ssl_photoz.surveys.sdss.sky.footprint import FieldId

FRAMES_4510 = real_path(*FRAMES_4510_4_0030)  # packaged strip of the field's five frames
TRACTOR = Path(__file__).parent / "data" / "real" / "tractor_sdss_1000_1_100"
FID_4510 = FieldId(4510, 4, 30)
FID_TRACTOR = FieldId(1000, 1, 100)
SAS_PATH_R = "/sas/dr12/boss/photoObj/frames/301/4510/4/frame-r-004510-4-0030.fits.bz2"


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# -- mock -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mock_fid(tiny_sky) -> FieldId:
    from ssl_photoz.surveys.sdss.sky.survey import MockSky

    fields = MockSky(tiny_sky).footprint.fields
    return fields[len(fields) // 2]


@pytest.fixture(scope="module")
def mock_full(tiny_sky, mock_fid, tmp_path_factory):
    """The r frame of one mock field, fetched once: (pixels, header)."""
    with MockFrameSource(tiny_sky, tmp_path_factory.mktemp("mock_full")) as frames:
        with fits.open(frames.fetch(mock_fid, "r")) as hdul:
            return hdul[0].data.copy(), hdul[0].header.copy()


def test_mock_full_frame_is_plain_fits_with_sdss_header(tiny_sky, mock_fid, tmp_path, mock_full):
    data, header = mock_full
    assert data.shape == (1489, 2048)
    assert header["BUNIT"] == "nanomaggy"
    assert (header["RUN"], header["CAMCOL"], header["FRAME"], header["FILTER"]) == (
        mock_fid.run,
        mock_fid.camcol,
        mock_fid.field,
        "r",
    )
    with MockFrameSource(tiny_sky, tmp_path) as frames:
        assert frames.supports_windows
        path = frames.fetch(mock_fid, "r")
        assert path.parent == tmp_path and path.name.endswith(".fits")
        assert path.read_bytes()[:6] == b"SIMPLE"  # not bzip2: Montage reads it as is
        expected = frames.sky.render(mock_fid, "r")[0].header
    for key in ("CRPIX1", "CRPIX2", "CRVAL1", "CRVAL2", "CD1_1", "CD1_2", "CD2_1", "CD2_2"):
        assert header[key] == pytest.approx(expected[key])


@pytest.mark.filterwarnings("ignore:.*RADECSYS")  # the real frames' header keyword, kept on purpose
def test_mock_window_equals_slice_of_full_frame(tiny_sky, mock_fid, tmp_path, mock_full):
    full, full_header = mock_full
    window = (100, 307, 200, 351)
    with MockFrameSource(tiny_sky, tmp_path) as frames:
        path = frames.fetch(mock_fid, "r", window=window)
        with fits.open(path) as hdul:
            part, header = hdul[0].data.copy(), hdul[0].header.copy()
    np.testing.assert_array_equal(part, full[200:351, 100:307])
    # The window's WCS puts its pixel (0, 0) where the frame's (100, 200) is.
    here = WCS(header).pixel_to_world_values(0.0, 0.0)
    there = WCS(full_header).pixel_to_world_values(100.0, 200.0)
    np.testing.assert_allclose(here, there, atol=1e-10)


def test_mock_refetch_after_release_gives_identical_pixels(tiny_sky, mock_fid, tmp_path):
    window = (0, 64, 0, 64)
    with MockFrameSource(tiny_sky, tmp_path) as frames:
        path = frames.fetch(mock_fid, "g", window=window)
        first = fits.getdata(path)
        frames.release(path)
        assert not path.exists()
        again = frames.fetch(mock_fid, "g", window=window)
        np.testing.assert_array_equal(fits.getdata(again), first)


def test_mock_names_are_unique_and_release_counts_fetches(tiny_sky, mock_fid, tmp_path):
    frames = MockFrameSource(tiny_sky, tmp_path)
    with frames:
        a = frames.fetch(mock_fid, "r", window=(0, 50, 0, 60))
        b = frames.fetch(mock_fid, "r", window=(0, 60, 0, 50))
        c = frames.fetch(mock_fid, "i", window=(0, 50, 0, 60))
        assert len({a, b, c}) == 3
        assert frames.fetch(mock_fid, "r", window=(0, 50, 0, 60)) == a
        frames.release(a)
        assert a.exists()  # still fetched once
        frames.release(a)
        assert not a.exists()
        frames.release(a)  # releasing again is harmless
    assert files_under(tmp_path) == []  # closing removed b and c, and left no temp files
    assert tmp_path.is_dir()  # but never the work folder itself


def test_mock_errors_name_the_frame(tiny_sky, mock_fid, tmp_path):
    with MockFrameSource(tiny_sky, tmp_path) as frames:
        with pytest.raises(FrameNotFoundError, match="run=1 camcol=1 field=1 band=r"):
            frames.fetch(FieldId(1, 1, 1), "r")
        with pytest.raises(FrameError, match=f"run={mock_fid.run} .*band=z.*window"):
            frames.fetch(mock_fid, "z", window=(0, 5000, 0, 10))
        with pytest.raises(ValueError, match="band"):
            frames.fetch(mock_fid, "q")
    assert files_under(tmp_path) == []


# -- SAS ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def r_bz2() -> bytes:
    return (FRAMES_4510 / "frame-r-004510-4-0030.fits.bz2").read_bytes()


@pytest.fixture(scope="module")
def r_plain(r_bz2) -> bytes:
    return bz2.decompress(r_bz2)


def good(body: bytes) -> Reply:
    return Reply(200, body, content_type="application/x-bzip2")


@pytest.fixture
def server():
    with LoopbackServer() as srv:
        yield srv


class Sas:
    """A SAS source pointed at the loopback server, with sleeps recorded instead of slept."""

    def __init__(self, tmp_path: Path, server: LoopbackServer, **kwargs):
        self.cache = tmp_path / "cache"
        self.work = tmp_path / "work"
        self.sleeps: list[float] = []
        options = {"retries": 3, "backoff_s": 1.0, "timeout_s": 10} | kwargs
        self.source = SasFrameSource(
            self.cache, self.work, base_url=server.url + "/sas", sleep=self.sleeps.append, **options
        )

    @property
    def cached(self) -> Path:
        return self.source.cache_path(FID_4510, "r")

    def clean(self) -> bool:
        """Nothing but finished frames and their sidecars in the cache."""
        return all(
            name.endswith((".fits.bz2", ".fits.bz2.sha256")) and not Path(name).name.startswith(".")
            for name in files_under(self.cache)
        )


def test_sas_urls_per_data_release(tmp_path):
    dr12 = SasFrameSource(tmp_path / "c", tmp_path / "w")
    assert dr12.url(FID_4510, "r") == (
        "https://data.sdss.org/sas/dr12/boss/photoObj/frames/301/4510/4/"
        "frame-r-004510-4-0030.fits.bz2"
    )
    dr17 = SasFrameSource(tmp_path / "c", tmp_path / "w", data_release=17)
    assert "/dr17/eboss/photoObj/frames/301/4510/4/" in dr17.url(FID_4510, "r")
    assert set(SAS_FRAME_PATHS) >= {12, 17}
    with pytest.raises(ValueError, match="data_release 7"):
        SasFrameSource(tmp_path / "c", tmp_path / "w", data_release=7)


def test_sas_download_then_cache_hit(tmp_path, server, r_bz2, r_plain):
    server.route("GET", SAS_PATH_R, good(r_bz2))
    sas = Sas(tmp_path, server)
    with sas.source as frames:
        path = frames.fetch(FID_4510, "r", window=(0, 10, 0, 10))  # no windows: the whole frame
        assert not frames.supports_windows
        assert path.parent == sas.work
        assert path.read_bytes() == r_plain
        with fits.open(path) as hdul:
            assert hdul[0].header["BUNIT"] == "nanomaggy"
            assert (
                hdul[0].data.shape
                == fits.getdata(FRAMES_4510 / "frame-r-004510-4-0030.fits.bz2").shape
            )
        assert sas.cached.read_bytes() == r_bz2
        sidecar = sas.cached.with_name(sas.cached.name + ".sha256")
        assert sidecar.read_text().split() == [hashlib.sha256(r_bz2).hexdigest(), sas.cached.name]
        frames.release(path)
        assert not path.exists() and sas.cached.exists()  # release never touches the cache
        assert frames.fetch(FID_4510, "r").read_bytes() == r_plain
    # A second job with the same cache does not download again either.
    with SasFrameSource(sas.cache, tmp_path / "work2", base_url=server.url + "/sas") as again:
        assert again.fetch(FID_4510, "r").read_bytes() == r_plain
    assert len(server.requests_to(SAS_PATH_R)) == 1
    assert sas.sleeps == []
    assert files_under(sas.work) == [] and sas.clean()


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(Reply(drop=True), id="dropped-connection"),
        pytest.param(Reply(503), id="http-503"),
        pytest.param("cut-honest", id="truncated-with-content-length"),
        pytest.param("cut-silent", id="truncated-without-content-length"),
        pytest.param("flipped", id="corrupt-bzip2"),
    ],
)
def test_sas_retries_a_fault_then_succeeds(tmp_path, server, r_bz2, r_plain, fault):
    if fault == "cut-honest":
        fault = Reply(200, r_bz2, cut_at=len(r_bz2) // 2, honest_length=True)
    elif fault == "cut-silent":
        fault = Reply(200, r_bz2, cut_at=len(r_bz2) - 1000)
    elif fault == "flipped":
        damaged = bytearray(r_bz2)
        damaged[len(damaged) // 2 : len(damaged) // 2 + 16] = bytes(16)
        fault = Reply(200, bytes(damaged))
    server.route("GET", SAS_PATH_R, replies(fault, good(r_bz2)))
    sas = Sas(tmp_path, server)
    with sas.source as frames:
        assert frames.fetch(FID_4510, "r").read_bytes() == r_plain
    assert len(server.requests_to(SAS_PATH_R)) == 2
    assert sas.sleeps == [1.0]
    assert sas.cached.read_bytes() == r_bz2
    assert sas.clean()


def test_sas_timeout_is_retried(tmp_path, server, r_bz2, r_plain):
    server.route("GET", SAS_PATH_R, replies(Reply(200, r_bz2, delay_s=2.0), good(r_bz2)))
    sas = Sas(tmp_path, server, timeout_s=0.3)
    with sas.source as frames:
        assert frames.fetch(FID_4510, "r").read_bytes() == r_plain
    assert len(server.requests_to(SAS_PATH_R)) == 2


def test_sas_corrupt_cache_entry_is_downloaded_again(tmp_path, server, r_bz2, r_plain, caplog):
    server.route("GET", SAS_PATH_R, good(r_bz2))
    sas = Sas(tmp_path, server)
    with sas.source as frames:
        frames.fetch(FID_4510, "r")
    damaged = bytearray(sas.cached.read_bytes())
    damaged[1000:1004] = bytes(b ^ 0xFF for b in damaged[1000:1004])
    sas.cached.write_bytes(bytes(damaged))
    with caplog.at_level(logging.WARNING, logger="ssl_photoz.surveys.sdss.sas_frames"):
        with SasFrameSource(sas.cache, tmp_path / "w2", base_url=server.url + "/sas") as again:
            assert again.fetch(FID_4510, "r").read_bytes() == r_plain
    assert len(server.requests_to(SAS_PATH_R)) == 2
    assert "damaged" in caplog.text and "run=4510 camcol=4 field=30 band=r" in caplog.text
    assert sas.cached.read_bytes() == r_bz2
    assert sas.clean()


def test_sas_cached_file_without_sidecar_is_checked_not_refetched(tmp_path, server, r_bz2):
    server.route("GET", SAS_PATH_R, good(r_bz2))
    sas = Sas(tmp_path, server)
    sas.cached.parent.mkdir(parents=True)
    sas.cached.write_bytes(r_bz2)  # e.g. a cache filled by hand with wget
    with sas.source as frames:
        frames.fetch(FID_4510, "r")
    assert server.requests_to(SAS_PATH_R) == []
    assert sas.cached.with_name(sas.cached.name + ".sha256").exists()


def test_sas_404_raises_at_once(tmp_path, server):
    sas = Sas(tmp_path, server)  # no route: the loopback server answers 404
    with sas.source as frames, pytest.raises(FrameNotFoundError) as caught:
        frames.fetch(FID_4510, "r")
    message = str(caught.value)
    assert "run=4510 camcol=4 field=30 band=r" in message
    assert server.url + SAS_PATH_R in message and "404" in message
    assert len(server.requests_to(SAS_PATH_R)) == 1 and sas.sleeps == []
    assert files_under(sas.cache) == [] and files_under(sas.work) == []


def test_sas_other_client_errors_are_not_retried(tmp_path, server):
    server.route("GET", SAS_PATH_R, Reply(403, "forbidden"))
    sas = Sas(tmp_path, server)
    with sas.source as frames, pytest.raises(FrameDownloadError, match="HTTP 403"):
        frames.fetch(FID_4510, "r")
    assert len(server.requests_to(SAS_PATH_R)) == 1


def test_sas_gives_up_after_retries(tmp_path, server):
    server.route("GET", SAS_PATH_R, Reply(503, "busy"))
    sas = Sas(tmp_path, server, retries=3)
    with sas.source as frames, pytest.raises(FrameDownloadError) as caught:
        frames.fetch(FID_4510, "r")
    message = str(caught.value)
    assert "gave up after 4 attempts" in message and "HTTP 503" in message
    assert "run=4510 camcol=4 field=30 band=r" in message and SAS_PATH_R in message
    assert len(server.requests_to(SAS_PATH_R)) == 4
    assert sas.sleeps == [1.0, 2.0, 4.0]  # exponential back-off
    assert files_under(sas.cache) == [] and files_under(sas.work) == []


def test_sas_truncated_every_time_leaves_no_partial_files(tmp_path, server, r_bz2):
    server.route("GET", SAS_PATH_R, Reply(200, r_bz2, cut_at=5000))
    sas = Sas(tmp_path, server, retries=1)
    with sas.source as frames, pytest.raises(FrameDownloadError, match="bzip2 stream ends early"):
        frames.fetch(FID_4510, "r")
    assert files_under(sas.cache) == [] and files_under(sas.work) == []


def test_sas_concurrent_fetches_share_one_good_cache_entry(tmp_path, server, r_bz2, r_plain):
    server.route("GET", SAS_PATH_R, good(r_bz2))
    results: list[bytes] = []

    def job(k: int) -> None:
        base = server.url + "/sas"
        with SasFrameSource(tmp_path / "cache", tmp_path / f"w{k}", base_url=base) as frames:
            results.append(frames.fetch(FID_4510, "r").read_bytes())

    threads = [threading.Thread(target=job, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [r_plain] * 3
    cached = tmp_path / "cache" / SAS_PATH_R.removeprefix("/sas/")
    assert cached.read_bytes() == r_bz2
    assert files_under(tmp_path / "cache") == [
        str(cached.relative_to(tmp_path / "cache")),
        str(cached.relative_to(tmp_path / "cache")) + ".sha256",
    ]


# -- frames on disk -------------------------------------------------------------------------------
def test_dir_bz2_frame_is_decompressed_into_work_dir(tmp_path, r_plain):
    with DirFrameSource(FRAMES_4510, tmp_path) as frames:
        path = frames.fetch(FID_4510, "r")
        assert path.parent == tmp_path and path.read_bytes() == r_plain
        frames.release(path)
        assert not path.exists()
    assert (FRAMES_4510 / "frame-r-004510-4-0030.fits.bz2").exists()


def test_dir_tractor_piece_without_bunit(tmp_path):
    with DirFrameSource(TRACTOR, tmp_path) as frames:
        with fits.open(frames.fetch(FID_TRACTOR, "r")) as hdul:
            assert hdul[0].data.shape == (100, 100)
            assert "BUNIT" not in hdul[0].header


def test_dir_plain_fits_is_used_in_place_and_never_deleted(tmp_path):
    folder = tmp_path / "frames" / "1000" / "1"  # the SAS <run>/<camcol>/ layout
    folder.mkdir(parents=True)
    plain = folder / "frame-r-001000-1-0100.fits"
    plain.write_bytes(bz2.decompress((TRACTOR / "frame-r-001000-1-0100.fits.bz2").read_bytes()))
    with DirFrameSource(tmp_path / "frames", tmp_path / "work") as frames:
        path = frames.fetch(FID_TRACTOR, "r")
        assert path == plain
        frames.release(path)
    assert plain.exists()


def test_dir_missing_frame_names_the_file(tmp_path):
    with DirFrameSource(TRACTOR, tmp_path) as frames, pytest.raises(FrameNotFoundError) as caught:
        frames.fetch(FID_TRACTOR, "g")
    message = str(caught.value)
    assert "run=1000 camcol=1 field=100 band=g" in message
    assert "frame-g-001000-1-0100.fits.bz2" in message


def test_dir_missing_folder_is_an_error_not_absent_frames(tmp_path):
    # Otherwise every frame would be "not found", i.e. absent, and every object a reject.
    with pytest.raises(FileNotFoundError, match="cutouts.frame_dir"):
        DirFrameSource(tmp_path / "no-such-folder", tmp_path / "work")


def test_dir_corrupt_bz2_is_reported_and_leaves_nothing(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    data = (TRACTOR / "frame-r-001000-1-0100.fits.bz2").read_bytes()
    (folder / "frame-r-001000-1-0100.fits.bz2").write_bytes(data[: len(data) // 2])
    with DirFrameSource(folder, tmp_path / "work") as frames:
        with pytest.raises(CorruptFrameError, match="run=1000 camcol=1 field=100 band=r"):
            frames.fetch(FID_TRACTOR, "r")
    assert files_under(tmp_path / "work") == []


# -- the factory ----------------------------------------------------------------------------------
def test_make_frame_source_from_config(tmp_path, tiny_sky):
    def cfg(**section):  # the CLI's sections come with the schema's defaults filled in
        return with_defaults("cutouts", section)

    work = tmp_path / "work"
    mock = make_frame_source(cfg(frame_source="mock"), work, sky_dir=tiny_sky)
    assert isinstance(mock, MockFrameSource)
    sas = make_frame_source(
        cfg(frame_source="sas", cache_dir="cache", sas_url="http://x/sas/", data_release=17),
        work,
        root=tmp_path,
    )
    assert isinstance(sas, SasFrameSource) and sas.cache_dir == tmp_path / "cache"
    assert sas.url(FID_4510, "u").startswith("http://x/sas/dr17/eboss/")
    folder = make_frame_source(cfg(frame_source="dir", frame_dir=str(TRACTOR)), work)
    assert isinstance(folder, DirFrameSource) and folder.folder == TRACTOR
    with pytest.raises(ValueError, match="cutouts.frame_dir"):
        make_frame_source(cfg(frame_source="dir"), work)
    with pytest.raises(ValueError, match="'ftp'"):
        make_frame_source(cfg(frame_source="ftp"), work)
    with pytest.raises(ValueError, match="sky_dir"):
        make_frame_source(cfg(frame_source="mock"), work)


def test_frames_module_imports_neither_the_simulation_nor_torch():
    code = (
        "import sys, ssl_photoz.surveys.sdss.frames; "
        "bad = [m for m in sys.modules "
        "if m.startswith('ssl_photoz.surveys.sdss.sky') or m == 'torch']; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
