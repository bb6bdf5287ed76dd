"""Command line: ``python -m mars_dtm_plugin predict INPUT OUTPUT [options]``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import TextIO

try:
    from osgeo import gdal
except ModuleNotFoundError as exc:  # pip does not install GDAL's bindings: they must match
    if exc.name != "osgeo":         # the system's GDAL (a broken GDAL says why, as it is)
        raise
    sys.exit("error: GDAL's Python bindings (osgeo) are missing; install them with the "
             "system's GDAL (python3-gdal on Debian and Ubuntu, gdal from conda-forge).")

from .core.engine import PredictOptions, predict_dtm
from .core.errors import Caution, DtmCancelled, DtmError


class _Once(argparse.Action):
    """An option given once: a second value is refused rather than kept in silence."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        if getattr(namespace, self.dest) is not None:
            parser.error(f"{option_string} takes one value")
        setattr(namespace, self.dest, value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mars-dtm" if sys.argv[0].endswith("mars-dtm") else "python -m mars_dtm_plugin",
        description="Predict a Digital Terrain Model (heights in metres) from one orbital image.")
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser(
        "predict", help="predict a DTM GeoTIFF from an image",
        description="Predict a DTM from INPUT (any raster GDAL reads) and write it to OUTPUT "
                    "as a Float32 GeoTIFF on the same grid.")
    predict.add_argument("input", metavar="INPUT",
                         help="image: georeferenced, or give --pixel-size")
    predict.add_argument("output", metavar="OUTPUT", help="DTM GeoTIFF to write")
    predict.add_argument("--model", metavar="PATH",
                         help="ONNX generator (default: the bundled model)")
    predict.add_argument("--band", type=int, metavar="N",
                         help="band to use (default: 1, or luminance of RGB; 0: luminance)")
    predict.add_argument("--overlap", type=int, metavar="PX",
                         help="tile overlap in pixels (default: the model's)")
    predict.add_argument("--sun-azimuth", type=float, metavar="DEG",
                         help="where the light comes from, degrees clockwise from north "
                              "(default: from the product's label or metadata)")
    predict.add_argument("--sun-elevation", type=float, metavar="DEG",
                         help="sun elevation above the horizon in degrees (default: from "
                              "the product's label or metadata, else 45 assumed and said)")
    predict.add_argument("--provider", choices=("auto", "cpu", "cuda"), default="auto",
                         help="onnxruntime execution provider (default: auto)")
    predict.add_argument("--pixel-size", type=float, metavar="M",
                         help="pixel size in metres: needed for an image without "
                              "georeferencing; replaces the measured size of others")
    predict.add_argument("--reference-dtm", metavar="PATH",
                         help="a coarser DTM of the same ground in metres (MOLA, HRSC, CTX "
                              "stereo): the output takes its long wavelengths and its datum")
    predict.add_argument("--reference-resolution", type=float, metavar="M",
                         help="the finest relief the reference DTM resolves, in metres "
                              "(default: its pixel size; a stereo DTM's is some three pixels)")
    predict.add_argument("--nodata", type=float, action="append", default=[], metavar="V",
                         help="a value to read as nodata besides what the file marks, such as "
                              "0 for a black collar without a nodata value (repeatable)")
    predict.add_argument("--reference-nodata", type=float, metavar="V", action=_Once,
                         help="a value of the reference DTM to read as nodata besides what "
                              "its file marks")
    predict.add_argument("--batch-size", type=int, default=None, metavar="N",
                         help="tiles per model call (default: about half a megapixel)")
    predict.add_argument("--threads", type=int, default=None, metavar="N",
                         help="CPU threads for the model (default: one per physical core)")
    predict.add_argument("--quiet", action="store_true", help="print warnings and errors only")
    return parser


class ProgressBar:
    """A one-line progress bar on a terminal (silent otherwise), and the run's messages;
    ``quiet``: no bar, and only the warnings among the messages."""

    def __init__(self, quiet: bool = False, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.quiet = quiet
        self.enabled = stream.isatty() and not quiet
        self.started = time.perf_counter()
        self.drawn = False

    def __call__(self, fraction: float) -> None:
        if not self.enabled:
            return
        filled = int(30 * fraction)
        elapsed = time.perf_counter() - self.started
        self.stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {100 * fraction:5.1f}% "
                          f"{elapsed:6.1f} s")
        self.stream.flush()
        self.drawn = True

    def say(self, line: str) -> None:
        """Print a message as the run gives it, on its own line below the bar."""
        if self.quiet and not isinstance(line, Caution):
            return
        self.close()
        _print(f"warning: {line}" if isinstance(line, Caution) else line)

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.drawn = False


# GDAL's default block cache is 5% of the machine's memory; a bounded cache keeps a command
# line run's memory flat whatever the raster's size.
GDAL_CACHE_BYTES = 256 * 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    gdal.SetCacheMax(GDAL_CACHE_BYTES)
    options = PredictOptions(
        model_path=args.model, band=args.band, overlap_px=args.overlap,
        sun_azimuth=args.sun_azimuth, sun_elevation=args.sun_elevation,
        provider=args.provider, pixel_size=args.pixel_size, batch_size=args.batch_size,
        threads=args.threads, nodata=tuple((value, value) for value in args.nodata),
        reference_dtm=args.reference_dtm, reference_resolution_m=args.reference_resolution,
        reference_nodata=args.reference_nodata)
    interrupted = []
    # Ctrl-C, and a batch system's time limit or a closed terminal, cancel cleanly; a signal
    # the caller ignores (nohup's SIGHUP) stays ignored.
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        number = getattr(signal, name, None)  # no SIGHUP on Windows
        if number is not None and signal.getsignal(number) is not signal.SIG_IGN:
            signal.signal(number, lambda *_: interrupted.append(True))
    bar = ProgressBar(quiet=args.quiet)
    try:
        report = predict_dtm(args.input, args.output, options, progress=bar, log=bar.say,
                             is_cancelled=lambda: bool(interrupted))
    except DtmCancelled as exc:
        _fail(bar, exc)
        return 130
    except DtmError as exc:
        _fail(bar, exc)
        return 1
    bar.close()
    if not args.quiet:
        _print(f"Done in {report.seconds:.1f} s")
    return 0


def _print(text: str, stream: TextIO | None = None) -> None:
    """Print (to stdout by default); a reader that has stopped reading (``| head``) does not
    stop the run."""
    stream = stream or sys.stdout
    try:
        print(text, file=stream, flush=True)
    except BrokenPipeError:  # the rest goes nowhere, the flush at exit included
        nowhere = os.open(os.devnull, os.O_WRONLY)
        os.dup2(nowhere, stream.fileno())
        os.close(nowhere)


def _fail(bar: ProgressBar, exc: Exception) -> None:
    bar.close()
    _print(f"error: {exc}", sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
