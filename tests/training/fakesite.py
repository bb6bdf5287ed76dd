"""A small UAHiRISE look-alike: real-format products in the real layout, and a loopback
HTTP server for them with Apache-style listings, Range requests and dropped connections."""

from __future__ import annotations

import html
import math
import threading
import time
import zlib
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
from osgeo import gdal

from training.synth import render, synthetic_dem

gdal.UseExceptions()
DTM_ROOT = "/PDS/DTM/"
MISSING_BITS = 0xFF7FFFFB

# Modelled on the attached label of a real HiRISE DTEEC product, cut to what readers use.
DTM_LABEL = """PDS_VERSION_ID            = PDS3

/* The label is attached: the image starts at record ^IMAGE. */
RECORD_TYPE               = FIXED_LENGTH
RECORD_BYTES              = {record_bytes}
FILE_RECORDS              = {file_records}
LABEL_RECORDS             = {label_records}
^IMAGE                    = {image_record}

DATA_SET_ID               = "MRO-M-HIRISE-5-DTM-V1.0"
PRODUCER_INSTITUTION_NAME = "UNIVERSITY OF ARIZONA"
PRODUCT_ID                = "{product_id}"
INSTRUMENT_HOST_ID        = "MRO"
INSTRUMENT_ID             = "HIRISE"
TARGET_NAME               = MARS
SOURCE_PRODUCT_ID         = ("{obs1}",
                             "{obs2}")
RATIONALE_DESC            = "Test terrain for the patch builder,
                             written by the test suite"

OBJECT = IMAGE_MAP_PROJECTION
    ^DATA_SET_MAP_PROJECTION     = "DSMAP.CAT"
    MAP_PROJECTION_TYPE          = "{projection}"
    PROJECTION_LATITUDE_TYPE     = PLANETOCENTRIC
    A_AXIS_RADIUS                = 3396.19 <KM>
    B_AXIS_RADIUS                = 3396.19 <KM>
    C_AXIS_RADIUS                = 3396.19 <KM>
    COORDINATE_SYSTEM_NAME       = PLANETOCENTRIC
    POSITIVE_LONGITUDE_DIRECTION = EAST
    CENTER_LATITUDE              = {center_lat} <DEG>
    CENTER_LONGITUDE             = {center_lon} <DEG>
    LINE_FIRST_PIXEL             = 1
    LINE_LAST_PIXEL              = {lines}
    SAMPLE_FIRST_PIXEL           = 1
    SAMPLE_LAST_PIXEL            = {samples}
    MAP_PROJECTION_ROTATION      = 0.0 <DEG>
    MAP_SCALE                    = {scale} <METERS/PIXEL>
    LINE_PROJECTION_OFFSET       = {line_offset} <PIXEL>
    SAMPLE_PROJECTION_OFFSET     = {sample_offset} <PIXEL>
END_OBJECT = IMAGE_MAP_PROJECTION

OBJECT = IMAGE
    LINES             = {lines}
    LINE_SAMPLES      = {samples}
    BANDS             = 1
    OFFSET            = 0.0
    SCALING_FACTOR    = 1.0
    SAMPLE_BITS       = 32
    SAMPLE_BIT_MASK   = 2#11111111111111111111111111111111#
    SAMPLE_TYPE       = PC_REAL
    MISSING_CONSTANT  = 16#FF7FFFFB#
END_OBJECT = IMAGE
END
"""

ORTHO_LABEL = """PDS_VERSION_ID = PDS3
/* Detached label of a HiRISE orthoimage (abridged) */
PRODUCT_ID = "{product_id}"
OBJECT = COMPRESSED_FILE
  FILE_NAME = "{product_id}.JP2"
  ENCODING_TYPE = "JP2"
END_OBJECT = COMPRESSED_FILE
GROUP = VIEWING_PARAMETERS
  INCIDENCE_ANGLE = {incidence} <DEG>
  EMISSION_ANGLE = 2.9 <DEG>
  PHASE_ANGLE = 48.3 <DEG>
  SUB_SOLAR_AZIMUTH = {sub_solar} <DEG>
  NORTH_AZIMUTH = {north} <DEG>
END_GROUP = VIEWING_PARAMETERS
END
"""


def missing_value() -> np.float32:
    return np.frombuffer(np.uint32(MISSING_BITS).tobytes(), np.float32)[0]


def write_pds_dtm(path: Path, heights: np.ndarray, ulx: float, uly: float,
                  obs: tuple[str, str], scale: float = 1.0,
                  projection: str = "EQUIRECTANGULAR", center: tuple[float, float] = (-15.0, 180.0),
                  ) -> None:
    """A PDS3 DTM with an attached label, float32 LSB, GDAL-readable with its georeferencing.

    GDAL puts the upper-left corner at ((-SAMPLE_OFFSET - 0.5), (LINE_OFFSET + 0.5)) pixels.
    """
    lines, samples = heights.shape
    record_bytes = samples * 4
    fields = {"record_bytes": record_bytes, "product_id": path.stem, "obs1": obs[0],
              "obs2": obs[1], "center_lat": center[0], "center_lon": center[1],
              "projection": projection, "lines": lines, "samples": samples,
              "scale": scale, "line_offset": uly / scale - 0.5,
              "sample_offset": -ulx / scale - 0.5}
    sized = DTM_LABEL.format(**fields, file_records=0, label_records=0, image_record=0)
    label_records = math.ceil((len(sized) + 32) / record_bytes)
    text = DTM_LABEL.format(**fields, file_records=label_records + lines,
                            label_records=label_records, image_record=label_records + 1)
    data = heights.astype("<f4").tobytes()
    path.write_bytes(text.encode("ascii").ljust(label_records * record_bytes, b" ") + data)


def write_ortho(path: Path, image: np.ndarray, gt: tuple, wkt: str, incidence: float = 40.0,
                sub_solar: float = 200.0, north: float = 270.0) -> None:
    """A lossless GeoJP2 orthoimage and its detached .LBL with the viewing geometry."""
    mem = gdal.GetDriverByName("MEM").Create("", image.shape[1], image.shape[0], 1,
                                             gdal.GDT_Byte)
    mem.SetGeoTransform(gt)
    mem.SetProjection(wkt)
    mem.GetRasterBand(1).WriteArray(image)
    gdal.GetDriverByName("JP2OpenJPEG").CreateCopy(
        str(path), mem, options=["GeoJP2=YES", "GMLJP2=NO", "REVERSIBLE=YES", "QUALITY=100"])
    path.with_suffix(".LBL").write_text(ORTHO_LABEL.format(
        product_id=path.stem, incidence=incidence, sub_solar=sub_solar, north=north))


@dataclass(frozen=True)
class Terrain:
    """Pair A's ground: where the DTM lies and where a 3 x 3 pixel mesa stands."""

    ulx: float = 350000.0
    uly: float = -120000.0
    width: int = 64
    height: int = 48
    mesa_col: int = 40  # DTM pixel of the mesa's upper-left cell
    mesa_row: int = 20
    mesa_m: float = 25.0
    hole: tuple[int, int] = (30, 30)  # (col, row) of one missing height inside
    collar: int = 6  # missing columns on the west side, as real DTM strips have

    @property
    def mesa_xy(self) -> tuple[float, float]:
        """Map coordinate of the mesa's upper-left corner."""
        return self.ulx + self.mesa_col, self.uly - self.mesa_row

    def heights(self) -> np.ndarray:
        rows, cols = np.mgrid[: self.height, : self.width]
        z = (-2500.0 + 0.1 * cols + 0.05 * rows).astype(np.float32)
        z[self.mesa_row:self.mesa_row + 3, self.mesa_col:self.mesa_col + 3] += self.mesa_m
        z[:, : self.collar] = missing_value()
        z[self.hole[1], self.hole[0]] = missing_value()
        return z

    def image(self, res: float, west: float, north: float, shape: tuple[int, int]) -> tuple:
        """Ortho pixels and geotransform at ``res`` m, its corner ``west``/``north`` of the
        DTM's: dim texture, the mesa bright at the same map coordinate."""
        rows, cols = np.mgrid[: shape[0], : shape[1]]
        image = (60 + (rows * 7 + cols * 3) % 50).astype(np.uint8)
        gt = (self.ulx - west, res, 0.0, self.uly + north, 0.0, -res)
        x, y = self.mesa_xy
        c0, r0 = round((x - gt[0]) / res), round((gt[3] - y) / res)
        cells = round(3 / res)
        image[r0:r0 + cells, c0:c0 + cells] = 250
        return image, gt


PAIR_A = "ESP_011384_2185_ESP_011661_2185"
PAIR_B = "ESP_011458_1640_PSP_005683_1640"
PAIR_C = "PSP_001336_1560_PSP_001534_1560"
PAIR_NO_DTM = "ESP_011494_1535_ESP_011639_1535"


def dtm_name(pair: str) -> str:
    p = pair.split("_")
    return f"DTEEC_{p[1]}_{p[2]}_{p[4]}_{p[5]}_A01.IMG"


def pair_dir(pair: str) -> str:
    phase, orbit = pair[:3], int(pair[4:10])
    low = orbit // 100 * 100
    return f"{phase}/ORB_{low:06d}_{low + 99:06d}/{pair}"


DTM_A = f"{DTM_ROOT}{pair_dir(PAIR_A)}/{dtm_name(PAIR_A)}"  # its URL path


def build_site(root: Path, terrain: Terrain) -> dict[str, Path]:
    """The product tree under ``root/PDS/DTM``; returns each pair's folder."""
    folders = {}
    for pair in (PAIR_A, PAIR_B, PAIR_C, PAIR_NO_DTM):
        folder = root / DTM_ROOT.strip("/") / pair_dir(pair)
        folder.mkdir(parents=True)
        folders[pair] = folder
    first, second = PAIR_A[:15], PAIR_A[16:]
    dtm = folders[PAIR_A] / dtm_name(PAIR_A)
    write_pds_dtm(dtm, terrain.heights(), terrain.ulx, terrain.uly, (first, second))
    wkt = gdal.Open(str(dtm)).GetProjection()
    # C ortho: 1 m, larger than the DTM and shifted; A ortho: 0.25 m. Decoys: the second
    # observation's ortho (listed first by name order reversed) and a colour product.
    write_ortho(folders[PAIR_A] / f"{first}_RED_C_01_ORTHO.JP2",
                *terrain.image(1.0, 5, 3, (60, 80)), wkt)
    write_ortho(folders[PAIR_A] / f"{first}_RED_A_01_ORTHO.JP2",
                *terrain.image(0.25, 0, 0, (4 * terrain.height, 4 * terrain.width)), wkt)
    for decoy in (f"{second}_RED_C_01_ORTHO.JP2", f"{first}_IRB_C_01_ORTHO.JP2"):
        write_ortho(folders[PAIR_A] / decoy, np.full((8, 8), 9, np.uint8),
                    (terrain.ulx, 1.0, 0, terrain.uly, 0, -1.0), wkt)
    for pair, west in ((PAIR_B, 1000.0), (PAIR_C, 5000.0)):  # apart: different ground
        obs = (pair[:15], pair[16:])
        z = np.random.default_rng(len(pair) + int(pair[4:10])).normal(size=(40, 40))
        write_pds_dtm(folders[pair] / dtm_name(pair), z.astype(np.float32), west, 2000.0, obs)
        image = np.full((40, 40), 100, np.uint8)
        write_ortho(folders[pair] / f"{obs[0]}_RED_C_01_ORTHO.JP2", image,
                    (west, 1.0, 0, 2000.0, 0, -1.0), wkt)
    (folders[PAIR_NO_DTM] / f"{PAIR_NO_DTM[:15]}_RED_C_01_ORTHO.LBL").write_text("END\n")
    (root / DTM_ROOT.strip("/") / "DTMCUMINDEX.TAB").write_text("index\n")
    return folders


@dataclass(frozen=True)
class RenderedPair:
    """A pair of :func:`build_rendered_site`: its heights (the DTM's grid) and ortho pixels."""

    pair_id: str
    heights: np.ndarray
    image: np.ndarray
    geotransform: tuple


def build_rendered_site(root: Path, count: int, size: int, sun: tuple[float, float],
                        seed: int = 0) -> list[RenderedPair]:
    """``count`` pairs of synthetic Mars terrain under ``root/PDS/DTM``: each a ``size`` px DTM
    at 1 m and its C ortho rendered under ``sun`` (azimuth from north, elevation) on the same
    grid, with the label's viewing geometry saying where that sun and north lie."""
    rng = np.random.default_rng(seed)
    made = []
    for i in range(count):
        orbit = 20000 + 300 * i
        pair = f"ESP_{orbit:06d}_2185_ESP_{orbit + 277:06d}_2185"
        folder = root / DTM_ROOT.strip("/") / pair_dir(pair)
        folder.mkdir(parents=True)
        heights = (synthetic_dem(rng, size) - 2000.0).astype(np.float32)
        ulx, uly = 350000.0 + 1000.0 * i, -120000.0
        dtm = folder / dtm_name(pair)
        write_pds_dtm(dtm, heights, ulx, uly, (pair[:15], pair[16:]))
        gt = (ulx, 1.0, 0.0, uly, 0.0, -1.0)
        image = np.maximum(render(heights, 1.0, *sun, rng), 1)  # 0 is the orthos' nodata
        # HiRISE measures both azimuths clockwise from the image's +sample axis (east here).
        write_ortho(folder / f"{pair[:15]}_RED_C_01_ORTHO.JP2", image, gt,
                    gdal.Open(str(dtm)).GetProjection(), incidence=90.0 - sun[1],
                    sub_solar=(sun[0] + 270.0) % 360.0, north=270.0)
        made.append(RenderedPair(pair, heights, image, gt))
    return made


class SiteServer:
    """Serves ``root`` on 127.0.0.1 and records every request.

    ``cuts[url_path]`` is a list of byte counts: each GET of that path takes the next one and
    drops the connection after sending that many bytes. Files carry an ETag and a Last-Modified
    date, and a Range with an If-Range of neither gets the whole file. ``slow[url_path]`` sends
    that file 1 kB at a time, that many seconds apart. ``extra_links[url_path]`` adds raw hrefs to a
    listing; ``redirects[url_path]`` answers with a 302 to that location; ``busy[url_path]`` is a
    list of Retry-After values: each GET takes the next and is answered ``busy_status`` (503).
    ``validators`` off: files carry no ETag or date; ``weak_etags`` on: their ETags are weak,
    so only the date can make an If-Range match; ``honours_if_range`` off: a Range is served
    whatever the If-Range says (as some proxies do); ``refuses_ranges`` on: every Range is
    answered 416.
    ``head_lengths[url_path]`` is the Content-Length a HEAD of that file reports.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[dict] = []
        self.cuts: dict[str, list[int]] = {}
        self.extra_links: dict[str, list[str]] = {}
        self.redirects: dict[str, str] = {}
        self.slow: dict[str, float] = {}
        self.busy: dict[str, list[str]] = {}
        self.busy_status = 503
        self.head_lengths: dict[str, str] = {}
        self.validators = self.honours_if_range = True
        self.weak_etags = self.refuses_ranges = False
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> SiteServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def reset(self) -> None:
        self.requests.clear()
        self.cuts.clear()
        self.extra_links.clear()
        self.redirects.clear()
        self.slow.clear()
        self.busy.clear()
        self.busy_status = 503
        self.head_lengths.clear()
        self.validators = self.honours_if_range = True
        self.weak_etags = self.refuses_ranges = False

    def gets(self, name: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == "GET" and r["path"].endswith(name)]


def _listing(url_path: str, folder: Path, extra: list[str]) -> bytes:
    rows = [f'<tr><td><a href="{html.escape(href)}">{html.escape(href)}</a></td></tr>'
            for href in extra]
    for entry in sorted(folder.iterdir(), reverse=True):  # order must not matter
        name = entry.name + ("/" if entry.is_dir() else "")
        rows.append(f'<tr><td><a href="{name}">{name}</a></td><td>2019-03-04 12:00</td></tr>')
    parent = url_path.rstrip("/").rsplit("/", 1)[0] + "/"
    return (f"<html><head><title>Index of {url_path}</title></head><body>"
            f"<h1>Index of {url_path}</h1><table><tr><th><a href=\"?C=N;O=D\">Name</a></th>"
            f'<th><a href="?C=M;O=A">Last modified</a></th></tr>'
            f'<tr><td><a href="{parent}">Parent Directory</a></td></tr>'
            + "".join(rows) + "</table></body></html>").encode()


def _handler(site: SiteServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            site.requests.append({"method": self.command, "path": path, "time": time.monotonic(),
                                  "range": self.headers.get("Range"),
                                  "if_range": self.headers.get("If-Range"),
                                  "agent": self.headers.get("User-Agent")})
            local = (site.root / path.lstrip("/")).resolve()
            if self.command == "GET" and site.busy.get(path):
                self.send_response(site.busy_status)
                self.send_header("Retry-After", site.busy[path].pop(0))
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path in site.redirects:
                self.send_response(302)
                self.send_header("Location", site.redirects[path])
                self.end_headers()
            elif not local.is_relative_to(site.root.resolve()) or not local.exists():
                self.send_error(404)
            elif local.is_dir():
                self._send(200, _listing(path, local, site.extra_links.get(path, [])),
                           "text/html", body)
            else:
                self._send_file(path, local, body)

        def _send_file(self, path: str, local: Path, body: bool) -> None:
            data = local.read_bytes()
            etag = ("W/" if site.weak_etags else "") + f'"{zlib.crc32(data):08x}"'
            modified = formatdate(local.stat().st_mtime, usegmt=True)
            if not body and path in site.head_lengths:
                self.send_response(200)
                self.send_header("Content-Length", site.head_lengths[path])
                self.end_headers()
                return
            if site.refuses_ranges and self.headers.get("Range") is not None:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            # A weak ETag never matches an If-Range; the date does (RFC 9110, 13.1.5).
            current = {modified} if site.weak_etags else {etag, modified}
            ranged = self.headers.get("Range") is not None and (not site.honours_if_range or
                self.headers.get("If-Range", etag) in current)  # else whole, as Apache sends it
            start = int(self.headers["Range"][6:].split("-")[0]) if ranged else 0
            if ranged:
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            if site.validators:
                self.send_header("ETag", etag)
                self.send_header("Last-Modified", modified)
            part = data[start:]
            self.send_header("Content-Length", str(len(part)))
            self.end_headers()
            cuts = site.cuts.get(path)
            if body and cuts:
                part = part[: cuts.pop(0)]
                self.close_connection = True
            if not body:
                return
            pause = site.slow.get(path)
            pieces = [part[i:i + 1024] for i in range(0, len(part), 1024)] if pause else [part]
            try:
                for piece in pieces:
                    self.wfile.write(piece)
                    if pause:
                        self.wfile.flush()
                        time.sleep(pause)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up: what it had is its .part

        def _send(self, code: int, data: bytes, kind: str, body: bool) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

    return Handler
