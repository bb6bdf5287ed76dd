"""Download HiRISE stereo DTMs and their orthoimages from the UAHiRISE PDS tree.

    python -m training.scrape --out DIR [--base-url URL] [--limit N] [--workers N]
                              [--resolution C|A]

Walks the Apache listings ``<base>/{PSP,ESP}/ORB_xxxxxx_xxxxxx/<pair>/``, picks each pair's DTM
(its latest version), a RED orthoimage of one of its observations (one made on that DTM version
first, the first observation's before the second's) and that ortho's label by parsing product
ids, and mirrors them under ``--out`` with the same relative layout. Every pair folder gets a
``pair.json`` and ``--out`` a ``manifest.json`` listing them all; only files marked
``complete`` there, with the recorded size, are for the patch builder. See docs/data.md.
"""

from __future__ import annotations

import argparse
import email.utils
import http.client
import json
import logging
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urljoin, urlsplit

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from training.products import Pair, is_orbit_dir, parse_pair, select_products

DEFAULT_BASE_URL = "https://www.uahirise.org/PDS/DTM/"
# Where the project is published; the User-Agent tells site operators whom to contact.
REPOSITORY_URL = "https://github.com/mars-dtm-plugin/mars-dtm-plugin"
USER_AGENT = f"mars-dtm-plugin-scraper/0.1 (+{REPOSITORY_URL})"
PHASES = ("PSP", "ESP")
CHUNK = 1 << 20
TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}
MAX_ASKED_WAIT = 300.0  # seconds: a longer Retry-After is cut to this
MAX_WAIT_S = 3600.0  # a --delay or --backoff beyond an hour is a slip of the keyboard
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")

log = logging.getLogger("training.scrape")
T = TypeVar("T")


class ShortRead(OSError):
    """The server closed the connection before the whole file came."""


class ScrapeError(RuntimeError):
    """The crawl cannot start or finds no pair; the message is one sentence for the user."""


class Refused(ValueError):
    """A link or a name the scraper will not follow or write."""


class Stopped(Exception):
    """The crawl is stopping (Ctrl-C, or a local error elsewhere): a download gives up."""


def is_transient(error: BaseException) -> bool:
    if isinstance(error, urllib.error.HTTPError):
        return error.code in TRANSIENT_HTTP
    # Network trouble only: a local disk error would fail again the same way.
    return isinstance(error, (urllib.error.URLError, ConnectionError, TimeoutError, ShortRead,
                              http.client.HTTPException))


class _SameHostRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only on the same host (http to https is fine), as links are."""

    def redirect_request(self, req: urllib.request.Request, fp: object, code: int, msg: str,
                         headers: object, newurl: str) -> urllib.request.Request | None:
        if urlsplit(newurl).netloc != urlsplit(req.full_url).netloc:
            raise Refused(f"{req.full_url} redirects to another host: {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class Http:
    """urllib with a cap on concurrent requests, a polite delay and retries with backoff."""

    def __init__(self, workers: int = 4, delay: float = 0.5, retries: int = 4,
                 backoff: float = 1.0, timeout: float = 60.0,
                 stopping: threading.Event | None = None) -> None:
        self.stopping = stopping or threading.Event()  # set: no new request, no more waiting
        self.slots = threading.BoundedSemaphore(workers)
        self.delay, self.retries, self.backoff, self.timeout = delay, retries, backoff, timeout
        self._lock = threading.Lock()
        self._next_start = 0.0
        self._opener = urllib.request.build_opener(_SameHostRedirects)

    def _wait_turn(self) -> None:
        with self._lock:
            pause = self._next_start - time.monotonic()
            if pause > 0:
                self.stopping.wait(pause)
            self._next_start = time.monotonic() + self.delay

    def request(self, url: str, method: str = "GET", headers: dict | None = None,
                consume: Callable[[http.client.HTTPResponse], T] = lambda r: r.read()) -> T:
        """Send one request and hand the open response to ``consume``, inside a slot."""
        req = urllib.request.Request(url, method=method,
                                     headers={"User-Agent": USER_AGENT, **(headers or {})})
        with self.slots:
            self._wait_turn()
            if self.stopping.is_set():
                raise Stopped("the crawl is stopping")
            with self._opener.open(req, timeout=self.timeout) as response:
                return consume(response)

    def retrying(self, func: Callable[[], T]) -> T:
        for attempt in range(self.retries + 1):
            try:
                return func()
            except Exception as error:
                if not is_transient(error) or attempt == self.retries:
                    raise
                log.debug("retrying after %s", error)
                self.stopping.wait(max(self.backoff * 2 ** attempt, _asked_wait(error)))
        raise AssertionError("unreachable")


def _asked_wait(error: Exception) -> float:
    """The seconds a busy server asks for (Retry-After, in seconds or as a date), at most
    MAX_ASKED_WAIT; 0 when it asks nothing."""
    asked = error.headers.get("Retry-After", "") if isinstance(
        error, urllib.error.HTTPError) and error.headers else ""
    if asked.strip().isdigit():
        seconds = float(asked)
    else:
        try:
            seconds = (email.utils.parsedate_to_datetime(asked) - datetime.now(timezone.utc)
                       ).total_seconds()
        except (TypeError, ValueError):  # no date, or a malformed one
            return 0.0
    return min(max(seconds, 0.0), MAX_ASKED_WAIT)


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.extend(value for name, value in attrs if name == "href" and value)


@dataclass(frozen=True)
class Link:
    name: str
    url: str
    is_dir: bool


def child_links(listing_url: str, html: str, refused: list[str]) -> list[Link]:
    """The entries of a directory listing that lie directly inside it.

    Sort links and the parent directory are ignored; links to another host, outside the
    listing or with names that could escape a local folder are refused and reported.
    """
    parser = _Anchors()
    parser.feed(html)
    here = urlsplit(listing_url)
    links = []
    for href in parser.hrefs:
        target = urlsplit(urljoin(listing_url, href))
        if (target.scheme, target.netloc) != (here.scheme, here.netloc):
            refused.append(f"{href} (another host)")
            continue
        if target.query or here.path.startswith(target.path):
            continue  # column sorting, this folder or a parent
        rest = target.path[len(here.path):] if target.path.startswith(here.path) else None
        segment = rest.rstrip("/") if rest else ""
        name = unquote(segment)
        if rest is None or "/" in segment or not SAFE_NAME.match(name):
            refused.append(f"{href} (outside the listing or an unsafe name)")
            continue
        links.append(Link(name, target._replace(fragment="").geturl(), rest.endswith("/")))
    return links


def local_path(out: Path, parts: list[str]) -> Path:
    """``out/parts...``, refusing any part that could leave ``out``."""
    for part in parts:
        if not SAFE_NAME.match(part):
            raise Refused(f"unsafe name {part!r}")
    path = out.joinpath(*parts)
    if not path.resolve().is_relative_to(out.resolve()):
        raise Refused(f"{path} lies outside {out}")
    return path


@dataclass
class Options:
    out: Path
    base_url: str = DEFAULT_BASE_URL
    limit: int | None = None
    workers: int = 4
    scale: str = "C"
    delay: float = 0.5
    retries: int = 4
    backoff: float = 1.0
    timeout: float = 60.0
    progress: bool = False


@dataclass
class Summary:
    found: int = 0
    fetched: int = 0
    skipped: int = 0
    failed: int = 0
    unusable: int = 0
    """Pairs whose folder lists no DTM or ortho of theirs: nothing to fetch, no failure."""
    refused: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)
    """Folders whose listing failed: the pairs in them were not seen."""
    unchecked: list[str] = field(default_factory=list)
    """Pairs complete from an earlier crawl that this one could not check again: their files
    and records are kept as they were."""

    def line(self) -> str:
        return (f"pairs found {self.found}, fetched {self.fetched}, skipped {self.skipped}, "
                f"failed {self.failed}, unusable {self.unusable}; "
                f"links refused {len(self.refused)}; folders unlisted {len(self.unlisted)}; "
                f"complete pairs not checked again {len(self.unchecked)}")


class Scraper:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.base_url = options.base_url.rstrip("/") + "/"
        self.stopping = threading.Event()
        self.http = Http(options.workers, options.delay, options.retries, options.backoff,
                         options.timeout, self.stopping)
        self.refused: list[str] = []
        self.unlisted: list[str] = []
        self.unchecked: list[str] = []
        self.pairs_done: Callable[[int], object] = lambda n: None

    def listing(self, url: str) -> list[Link]:
        body = self.http.retrying(lambda: self.http.request(url))
        return child_links(url, body.decode("utf-8", "replace"), self.refused)

    def folder(self, url: str) -> list[Link]:
        """A folder's listing; one that fails is counted and passed over, not fatal."""
        try:
            return self.listing(url)
        except Exception as error:
            log.warning("folder %s not listed: %s: %s", url, type(error).__name__, error)
            self.unlisted.append(url)
            return []

    def pair_dirs(self, root: list[Link]) -> Iterator[tuple[Pair, Link, list[str]]]:
        """Pair folders: phases in ``PHASES`` order, then orbit blocks and pairs by name, so
        ``--limit`` takes the same sample whatever order a server lists them in."""
        phases = {link.name.upper(): link for link in root
                  if link.is_dir and link.name.upper() in PHASES}
        for phase in (phases[name] for name in PHASES if name in phases):
            for orbits in sorted(self.folder(phase.url), key=lambda link: link.name):
                if not (orbits.is_dir and is_orbit_dir(orbits.name)):
                    continue
                for link in sorted(self.folder(orbits.url), key=lambda link: link.name):
                    pair = parse_pair(link.name) if link.is_dir else None
                    if pair is not None:
                        yield pair, link, [phase.name, orbits.name, link.name]

    def run(self, root: list[Link]) -> tuple[Summary, list[dict]]:
        pairs = self.pair_dirs(root)
        with ThreadPoolExecutor(self.options.workers) as pool, tqdm(
                desc="pairs", unit="pair", total=self.options.limit,
                disable=not self.options.progress) as bar:
            self.pairs_done = bar.update
            try:
                # range first: zip must not list one pair folder beyond the limit
                futures = [pool.submit(self.fetch_pair, *item) for _, item in
                           zip(range(self.options.limit or sys.maxsize), pairs)]
                records = [future.result() for future in futures]
            except BaseException:  # Ctrl-C, or a local disk error: stop every download
                self.stopping.set()
                pool.shutdown(cancel_futures=True)
                raise
        summary = Summary(found=len(records), refused=self.refused, unlisted=self.unlisted,
                          unchecked=sorted(self.unchecked))
        for record in records:
            if record["pair_id"] in self.unchecked:
                continue
            outcome = pair_outcome(record)
            setattr(summary, outcome, getattr(summary, outcome) + 1)
        return summary, sorted(records, key=lambda r: r["pair_id"])

    def fetch_pair(self, pair: Pair, link: Link, parts: list[str]) -> dict:
        record: dict = {"pair_id": str(pair), "url": link.url, "dir": "/".join(parts),
                        "files": [], "status": "unusable", "reason": ""}
        folder = local_path(self.options.out, parts)
        try:
            listed = {entry.name: entry for entry in self.listing(link.url) if not entry.is_dir}
            selection, record["reason"] = select_products(pair, sorted(listed),
                                                          self.options.scale)
            if selection is not None:
                roles = zip(("dtm", "ortho", "ortho_label"), selection.names)
                record["files"] = [self.fetch_file(role, listed[name], folder)
                                   for role, name in roles]
                missing = [f"{f['path']} {f['status']} ({f['error']})"
                           for f in record["files"] if f["status"] != "complete"]
                record["status"] = "incomplete" if missing else "complete"
                record["reason"] = "; ".join(missing)
        except Exception as error:
            record.update(status="incomplete", reason=f"{type(error).__name__}: {error}")
        if self.stopping.is_set():  # cut short: the rerun writes what it finds
            return record
        if record["status"] == "incomplete" and (earlier := complete_on_disk(folder)):
            # A server hiccup on a rerun must not unlist files that are whole on disk.
            log.warning("pair %s: not checked again (%s); its complete files are kept", pair,
                        record["reason"])
            self.unchecked.append(str(pair))
            self.pairs_done(1)
            return earlier
        if record["status"] != "complete":
            log.warning("pair %s: %s", pair, record["reason"])
        write_json(folder / "pair.json", record)
        self.pairs_done(1)
        return record

    def fetch_file(self, role: str, link: Link, folder: Path) -> dict:
        entry = {"role": role, "product_id": link.name.rsplit(".", 1)[0], "url": link.url,
                 "path": link.name, "size": None, "status": "failed", "action": "failed",
                 "error": None}
        try:
            dest = local_path(folder, [link.name])
            entry["size"] = self.http.retrying(lambda: self.remote_size(link.url))
            entry["action"] = self.download(link.url, dest, entry["size"])
            entry["status"] = "complete"
        except Exception as error:
            entry["error"] = f"{type(error).__name__}: {error}"
            part = folder / (link.name + ".part")
            entry["status"] = "partial" if part.exists() else "failed"
        return entry

    def remote_size(self, url: str) -> int:
        length = self.http.request(url, "HEAD",
                                   consume=lambda r: r.headers.get("Content-Length"))
        if length is None or not length.isdigit():
            raise ValueError(f"{url} has no Content-Length to verify a download against")
        return int(length)

    def download(self, url: str, dest: Path, size: int) -> str:
        """Fetch ``url`` into ``dest`` via ``dest.part``, resuming what an earlier try left."""
        part = dest.with_name(dest.name + ".part")
        if dest.exists():
            if dest.stat().st_size == size:
                return "skipped"
            dest.unlink()  # only complete files get this name: the remote one has changed
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tqdm(total=size, unit="B", unit_scale=True, desc=dest.name, leave=False,
                  disable=not self.options.progress) as bar:
            self.http.retrying(lambda: self._resume(url, part, size, bar))
        os.replace(part, dest)
        _validator(part).unlink(missing_ok=True)
        return "fetched"

    def _resume(self, url: str, part: Path, size: int, bar: tqdm) -> None:
        offset = part.stat().st_size if part.exists() else 0
        if offset > size or not part.exists():  # an empty file is fetched as an empty .part
            part.write_bytes(b"")
            offset = 0
        if offset < size or not size:  # an empty file too: its GET checks what HEAD said
            # The rest only of a file known unchanged; without a validator, all of it again.
            known = _validator(part).read_text() if _validator(part).exists() else ""
            headers = {"Range": f"bytes={offset}-", "If-Range": known} if offset and known \
                else {}
            if not headers:
                offset = 0
            try:
                self.http.request(url, headers=headers, consume=lambda r: self._append(
                    r, part, offset, size, known, bar))
            except urllib.error.HTTPError as error:
                if error.code != 416 or not headers:
                    raise
                part.write_bytes(b"")  # the server will not continue it: start again
                _validator(part).unlink(missing_ok=True)
                raise ShortRead(f"the server would not continue {part.name}; fetching it "
                                f"whole") from error
        if part.stat().st_size != size:
            raise ShortRead(f"{part.name}: {part.stat().st_size} of {size} bytes")

    def _append(self, response: http.client.HTTPResponse, part: Path, offset: int, size: int,
                known: str, bar: tqdm) -> None:
        ranged = response.status == 206
        if ranged and response.headers.get("Content-Range") != f"bytes {offset}-{size - 1}/{size}":
            raise ShortRead(f"server answered a different range for {part.name}")
        length, expected = response.headers.get("Content-Length"), size - offset if ranged else size
        if length is not None and length.isdigit() and int(length) != expected:
            raise ShortRead(f"the server sends {length} bytes of {part.name} where {expected} "
                            f"were expected (its HEAD gave {size})")
        if ranged and _validator_of(response) != known:
            # A server that ignores If-Range sends the rest of another file: start again.
            part.write_bytes(b"")
            _validator(part).unlink(missing_ok=True)
            raise ShortRead(f"{part.name} changed on the server; fetching it whole")
        if not ranged:  # from the start (an If-Range that failed, too): remember which file
            _remember_validator(response, part)
        bar.reset(bar.total)
        bar.update(offset if ranged else 0)
        with open(part, "ab" if ranged else "wb") as handle:
            while chunk := response.read1(CHUNK):  # what has come: a stop is seen at once
                if self.stopping.is_set():  # what came is kept in .part for the next run
                    raise Stopped("the crawl is stopping")
                handle.write(chunk)
                bar.update(len(chunk))


def _validator(part: Path) -> Path:
    """Where the ETag or Last-Modified of the file a ``.part`` holds the start of is kept."""
    return part.with_name(part.name + ".validator")


def _validator_of(response: http.client.HTTPResponse) -> str:
    """The ETag, or the Last-Modified date, that names this version of the file."""
    etag = response.headers.get("ETag", "")
    # A weak ETag may not go in If-Range (RFC 9110, 13.1.5); a date may.
    return etag if etag and not etag.startswith("W/") else response.headers.get(
        "Last-Modified", "")


def _remember_validator(response: http.client.HTTPResponse, part: Path) -> None:
    if value := _validator_of(response):
        _validator(part).write_text(value)
    else:  # nothing to check a resume against: a later try fetches the whole file again
        _validator(part).unlink(missing_ok=True)


def complete_on_disk(folder: Path) -> dict | None:
    """The pair's record from an earlier crawl, when it says complete and every file it lists
    is there at its recorded size."""
    try:
        earlier = json.loads((folder / "pair.json").read_text())
        whole = earlier["status"] == "complete" and all(
            local_path(folder, [f["path"]]).stat().st_size == f["size"] for f in earlier["files"])
    except (OSError, ValueError, KeyError, TypeError):  # none, unreadable, or not ours
        return None
    return earlier if whole else None


def pair_outcome(record: dict) -> str:
    """How a pair counts in the summary: fetched, skipped (all there already), unusable (no
    products of its own listed) or failed."""
    if record["status"] == "unusable":
        return "unusable"
    if record["status"] != "complete":
        return "failed"
    return "skipped" if all(f["action"] == "skipped" for f in record["files"]) else "fetched"


def write_json(path: Path, data: object) -> None:
    """Write under a temporary name and rename, so a reader never sees half a manifest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".part")
    temp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(temp, path)


def read_manifest(source: Path) -> list[tuple[dict, Path]]:
    """Pair records of a manifest.json, a pair.json or a scrape folder, each with the folder
    its file paths are relative to."""
    if source.is_dir():
        top = source / "manifest.json"
        if not top.is_file():
            return [(json.loads(p.read_text()), p.parent)
                    for p in sorted(source.rglob("pair.json"))]
        source = top
    data = json.loads(source.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{source} is no scrape manifest or pair.json: it must hold a JSON "
                         "object")
    if "pairs" in data:
        return [(record, local_path(source.parent, record["dir"].split("/")))
                for record in data["pairs"]]
    return [(data, source.parent)]


def scrape(options: Options) -> Summary:
    """Crawl, download and write ``manifest.json`` under ``options.out``."""
    scraper = Scraper(options)
    try:
        root = scraper.listing(scraper.base_url)
    except Exception as error:
        raise ScrapeError(f"cannot read the listing at {scraper.base_url}: {error}") from error
    with _only_crawl_into(options.out):
        summary, records = scraper.run(root)
        if not summary.found:  # a wrong URL: keep whatever manifest an earlier crawl wrote
            unlisted = f" ({len(summary.unlisted)} folders could not be listed)" \
                if summary.unlisted else ""
            raise ScrapeError(f"no pair folders ({'/'.join(PHASES)}/ORB_*/<pair>/) found "
                              f"under {scraper.base_url}{unlisted}; check --base-url")
        manifest = options.out / "manifest.json"
        write_json(manifest, {
            "base_url": scraper.base_url, "user_agent": USER_AGENT, "scale": options.scale,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "summary": asdict(summary),
            "pairs": _with_earlier_pairs(manifest, records),
        })
    return summary


@contextmanager
def _only_crawl_into(out: Path) -> Iterator[None]:
    """Hold ``out/.scrape.lock`` while crawling: two crawls into one folder would write the same
    ``.part`` files. The lock goes with the process, however it ends."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".scrape.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ScrapeError(f"another crawl is writing into {out}; let it finish (or stop "
                              f"it) and run this one again") from None
        yield


def _with_earlier_pairs(manifest: Path, records: list[dict]) -> list[dict]:
    """``records`` and the pairs of an earlier crawl into the same folder that this one did
    not visit (a rerun with a smaller ``--limit``), so the manifest lists every pair there."""
    try:
        earlier = json.loads(manifest.read_text())["pairs"]
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or not one we can use
        return records
    visited = {record["pair_id"] for record in records}
    kept = [r for r in earlier if isinstance(r, dict) and r.get("pair_id") not in visited]
    return sorted(records + kept, key=lambda r: r["pair_id"])


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m training.scrape", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder to mirror into")
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL, help="root of the DTM tree")
    parser.add_argument("--limit", type=int, help="take at most N pair folders")
    parser.add_argument("--workers", type=int, default=4, help="concurrent requests (1-16)")
    parser.add_argument("--resolution", choices=("C", "A"), default="C",
                        help="orthoimage scale: C 1 m (default) or A 0.25 m")
    parser.add_argument("--delay", type=float, default=0.5,
                        help="seconds between the starts of two requests")
    parser.add_argument("--retries", type=int, default=4, help="retries on transient errors")
    parser.add_argument("--backoff", type=float, default=1.0,
                        help="first retry wait in seconds, doubled on each retry")
    args = parser.parse_args(argv)
    url = urlsplit(args.base_url)
    problems = [
        (url.scheme not in ("http", "https") or not url.netloc,
         f"--base-url must be an http(s) URL, got {args.base_url!r}"),
        (args.out.exists() and not args.out.is_dir(), f"--out {args.out} is not a folder"),
        (args.limit is not None and args.limit < 1, "--limit must be at least 1"),
        (not 1 <= args.workers <= 16, "--workers must be between 1 and 16"),
        (args.delay < 0 or args.retries < 0 or args.backoff < 0,
         "--delay, --retries and --backoff must not be negative"),
        (not (args.delay <= MAX_WAIT_S and args.backoff <= MAX_WAIT_S),  # NaN too
         f"--delay and --backoff must be at most {MAX_WAIT_S} seconds"),
    ]
    for bad, message in problems:
        if bad:
            parser.exit(2, f"error: {message}.\n")
    return Options(args.out, args.base_url, args.limit, args.workers, args.resolution,
                   args.delay, args.retries, args.backoff, progress=sys.stderr.isatty())


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        with logging_redirect_tqdm():  # warnings above the progress bars, not through them
            summary = scrape(options)
    except ScrapeError as error:
        print(f"error: {error}.", file=sys.stderr)
        return 1
    except OSError as error:  # a local disk error; network errors are counted per file
        print(f"error: cannot write under {options.out}: {error}.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; what was fetched is kept (a file cut short as .part), "
              "and the same command resumes.", file=sys.stderr)
        return 130
    print(f"{summary.line()}; manifest {options.out / 'manifest.json'}")
    return 1 if summary.failed or summary.unlisted or summary.unchecked else 0


if __name__ == "__main__":
    sys.exit(main())
