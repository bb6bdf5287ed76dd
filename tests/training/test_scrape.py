"""The scraper against a real loopback server in UAHiRISE's layout."""

from __future__ import annotations

import email.utils
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.training.conftest import options
from tests.training.fakesite import (
    DTM_A,
    DTM_ROOT,
    PAIR_A,
    PAIR_C,
    PAIR_NO_DTM,
    SiteServer,
    Terrain,
    build_site,
    dtm_name,
    pair_dir,
)
from training.scrape import (
    MAX_ASKED_WAIT,
    USER_AGENT,
    Http,
    Refused,
    Scraper,
    Stopped,
    _asked_wait,
    local_path,
    main,
    scrape,
)

ROOT = Path(__file__).resolve().parents[2]


def _pair_record(out: Path, pair_id: str) -> dict:
    pairs = json.loads((out / "manifest.json").read_text())["pairs"]
    return next(p for p in pairs if p["pair_id"] == pair_id)


def test_full_crawl_mirrors_the_chosen_products(server: SiteServer, site: Path,
                                                tmp_path: Path) -> None:
    summary = scrape(options(server, tmp_path))
    assert (summary.found, summary.fetched, summary.skipped, summary.failed,
            summary.unusable) == (4, 3, 0, 0, 1)
    records = ("pair.json", "manifest.json", ".scrape.lock")
    fetched = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")
                     if p.is_file() and p.name not in records)
    assert len(fetched) == 9
    for rel in fetched:
        assert (tmp_path / rel).read_bytes() == (site / DTM_ROOT.strip("/") / rel).read_bytes()
    first = PAIR_A[:15]
    assert {Path(f).name for f in fetched if PAIR_A in f} == {
        dtm_name(PAIR_A), f"{first}_RED_C_01_ORTHO.JP2", f"{first}_RED_C_01_ORTHO.LBL"}
    record = _pair_record(tmp_path, PAIR_A)
    assert json.loads((tmp_path / record["dir"] / "pair.json").read_text()) == record
    dtm = record["files"][0]
    assert (dtm["role"], dtm["status"], dtm["size"]) == (
        "dtm", "complete", (tmp_path / record["dir"] / dtm["path"]).stat().st_size)
    assert _pair_record(tmp_path, PAIR_NO_DTM)["reason"] == f"no DTM of pair {PAIR_NO_DTM} listed"
    assert {r["agent"] for r in server.requests} == {USER_AGENT}


def test_a_rerun_the_server_fails_keeps_the_pairs_complete_on_disk(
        server: SiteServer, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    scrape(options(server, tmp_path))
    before = _pair_record(tmp_path, PAIR_A)
    server.reset()
    server.busy[DTM_A.rsplit("/", 1)[0] + "/"] = ["0"] * 10  # the pair's folder is down
    summary = scrape(options(server, tmp_path, retries=1))
    assert summary.unchecked == [PAIR_A] and (summary.failed, summary.skipped) == (0, 2)
    assert _pair_record(tmp_path, PAIR_A) == before
    assert json.loads((tmp_path / before["dir"] / "pair.json").read_text()) == before
    server.busy[DTM_A.rsplit("/", 1)[0] + "/"] = ["0"] * 10
    code = main(["--out", str(tmp_path), "--base-url", server.url + DTM_ROOT, "--delay", "0",
                 "--retries", "0"])
    assert code == 1 and "complete pairs not checked again 1" in capsys.readouterr().out
    # A file since cut short on disk makes its pair no longer complete, checked or not.
    local = tmp_path / pair_dir(PAIR_A) / dtm_name(PAIR_A)
    local.write_bytes(local.read_bytes()[:5000])
    server.busy[DTM_A.rsplit("/", 1)[0] + "/"] = ["0"] * 10
    summary = scrape(options(server, tmp_path, retries=1))
    assert summary.unchecked == [] and summary.failed == 1
    assert _pair_record(tmp_path, PAIR_A)["status"] == "incomplete"


def test_a_second_crawl_into_the_same_folder_is_refused(server: SiteServer, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    import fcntl

    with open(tmp_path / ".scrape.lock", "w") as held:  # as a crawl under way holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code = main(["--out", str(tmp_path), "--base-url", server.url + DTM_ROOT, "--delay", "0"])
    assert code == 1
    assert capsys.readouterr().err.strip() == (
        f"error: another crawl is writing into {tmp_path}; let it finish (or stop it) and run "
        "this one again.")
    assert [p.name for p in tmp_path.iterdir()] == [".scrape.lock"]
    assert scrape(options(server, tmp_path)).fetched == 3  # once it has ended


def test_a_server_that_will_not_continue_a_file_gets_asked_for_all_of_it(
        server: SiteServer, site: Path, tmp_path: Path) -> None:
    server.cuts[DTM_A] = [5000]
    scrape(options(server, tmp_path, retries=0))
    server.reset()
    server.refuses_ranges = True  # 416, as behind a cache whose HEAD and GET disagree
    assert scrape(options(server, tmp_path, retries=1)).failed == 0
    assert [r["range"] for r in server.gets(dtm_name(PAIR_A))] == ["bytes=5000-", None]
    local = tmp_path / pair_dir(PAIR_A) / dtm_name(PAIR_A)
    assert local.read_bytes() == (site / DTM_A.lstrip("/")).read_bytes()


@pytest.mark.parametrize("head_says", ["0", "100"])
def test_a_size_the_download_does_not_bear_out_is_never_complete(
        server: SiteServer, tmp_path: Path, head_says: str) -> None:
    server.head_lengths[DTM_A] = head_says  # a proxy's HEAD that does not match its GET
    summary = scrape(options(server, tmp_path, retries=0))
    assert summary.failed == 1
    dtm = _pair_record(tmp_path, PAIR_A)["files"][0]
    assert dtm["status"] != "complete" and f"where {head_says} were expected" in dtm["error"]
    assert not (tmp_path / pair_dir(PAIR_A) / dtm_name(PAIR_A)).exists()


def test_rerun_skips_complete_files(server: SiteServer, tmp_path: Path) -> None:
    scrape(options(server, tmp_path))
    server.reset()
    summary = scrape(options(server, tmp_path))
    assert (summary.fetched, summary.skipped, summary.failed, summary.unusable) == (0, 3, 0, 1)
    assert not [r for r in server.requests if r["method"] == "GET" and not r["path"].endswith("/")]


def test_a_file_cut_short_on_disk_since_the_last_crawl_is_fetched_again(
        server: SiteServer, site: Path, tmp_path: Path) -> None:
    scrape(options(server, tmp_path))
    local = tmp_path / pair_dir(PAIR_A) / dtm_name(PAIR_A)
    whole = local.read_bytes()
    local.write_bytes(whole[:5000])  # a copy or a sync that stopped part-way
    server.reset()
    assert scrape(options(server, tmp_path)).failed == 0
    assert [r["range"] for r in server.gets(dtm_name(PAIR_A))] == [None]
    assert local.read_bytes() == whole == (site / DTM_A.lstrip("/")).read_bytes()


def test_a_part_left_whole_by_a_crawl_stopped_before_its_rename_is_not_fetched_again(
        server: SiteServer, site: Path, tmp_path: Path) -> None:
    scrape(options(server, tmp_path))
    local = tmp_path / pair_dir(PAIR_A) / dtm_name(PAIR_A)
    local.rename(local.with_name(local.name + ".part"))
    server.reset()
    assert scrape(options(server, tmp_path)).failed == 0
    assert server.gets(dtm_name(PAIR_A)) == []
    assert local.read_bytes() == (site / DTM_A.lstrip("/")).read_bytes()


def test_interrupted_download_resumes_on_rerun(server: SiteServer, site: Path,
                                               tmp_path: Path) -> None:
    server.cuts[DTM_A] = [5000]
    summary = scrape(options(server, tmp_path, retries=0))
    local = tmp_path / pair_dir(PAIR_A) / dtm_name(PAIR_A)
    assert summary.failed == 1 and not local.exists()
    assert local.with_name(local.name + ".part").stat().st_size == 5000
    assert _pair_record(tmp_path, PAIR_A)["files"][0]["status"] == "partial"
    server.reset()
    assert scrape(options(server, tmp_path)).failed == 0
    assert [r["range"] for r in server.gets(dtm_name(PAIR_A))] == ["bytes=5000-"]
    assert local.read_bytes() == (site / DTM_A.lstrip("/")).read_bytes()
    assert not local.with_name(local.name + ".part").exists()


def test_a_file_changed_on_the_server_since_the_cut_is_fetched_whole(
        server: SiteServer, site: Path, tmp_path: Path) -> None:
    server.cuts[DTM_A] = [5000]
    scrape(options(server, tmp_path, retries=0))
    remote = site / DTM_A.lstrip("/")
    original = remote.read_bytes()
    changed = bytes(255 - b for b in original)  # the same size: only the ETag tells
    remote.write_bytes(changed)
    try:
        server.reset()
        assert scrape(options(server, tmp_path)).failed == 0
    finally:
        remote.write_bytes(original)  # the site is the session's
    (get,) = server.gets(dtm_name(PAIR_A))
    assert get["range"] == "bytes=5000-" and get["if_range"] == f'"{zlib.crc32(original):08x}"'
    local = tmp_path / pair_dir(PAIR_A) / dtm_name(PAIR_A)
    assert local.read_bytes() == changed
    assert not list(local.parent.glob(local.name + ".*"))  # no .part, no .part.validator


@pytest.mark.parametrize("changed", [False, True])
def test_behind_a_weak_etag_a_resume_is_checked_against_the_date(
        server: SiteServer, site: Path, tmp_path: Path, changed: bool) -> None:
    server.weak_etags = True
    server.cuts[DTM_A] = [5000]
    scrape(options(server, tmp_path, retries=0))
    remote = site / DTM_A.lstrip("/")
    original, stamp = remote.read_bytes(), remote.stat().st_mtime
    cut_on = email.utils.formatdate(stamp, usegmt=True)
    try:
        if changed:  # the same size, a later date: only the date tells
            remote.write_bytes(bytes(255 - b for b in original))
            os.utime(remote, (stamp + 60, stamp + 60))
        server.reset()
        server.weak_etags = True
        assert scrape(options(server, tmp_path)).failed == 0
        expected = remote.read_bytes()
    finally:
        remote.write_bytes(original)  # the site is the session's
        os.utime(remote, (stamp, stamp))
    gets = server.gets(dtm_name(PAIR_A))
    assert [(g["range"], g["if_range"]) for g in gets] == [("bytes=5000-", cut_on)]
    local = tmp_path / pair_dir(PAIR_A) / dtm_name(PAIR_A)
    assert local.read_bytes() == expected
    assert (expected != original) == changed


@pytest.mark.parametrize("server_kind", ["ignores If-Range", "sends no ETag"])
def test_a_changed_file_is_never_spliced_whatever_the_server(
        server: SiteServer, site: Path, tmp_path: Path, server_kind: str) -> None:
    server.validators = server_kind != "sends no ETag"
    server.cuts[DTM_A] = [5000]
    scrape(options(server, tmp_path, retries=0))
    remote = site / DTM_A.lstrip("/")
    original = remote.read_bytes()
    changed = bytes(255 - b for b in original)  # the same size
    remote.write_bytes(changed)
    try:
        server.reset()
        server.honours_if_range = server_kind != "ignores If-Range"
        server.validators = server_kind != "sends no ETag"
        assert scrape(options(server, tmp_path)).failed == 0
    finally:
        remote.write_bytes(original)  # the site is the session's
    local = tmp_path / pair_dir(PAIR_A) / dtm_name(PAIR_A)
    assert local.read_bytes() == changed
    # The rest of another file is thrown away, or never asked for without a validator.
    ranges = [get["range"] for get in server.gets(dtm_name(PAIR_A))]
    assert ranges == (["bytes=5000-", None] if server_kind == "ignores If-Range" else [None])


def test_dropped_connections_are_retried_from_where_they_broke(
        server: SiteServer, site: Path, tmp_path: Path) -> None:
    server.cuts[DTM_A] = [3000, 4000]
    scrape(options(server, tmp_path))
    assert _pair_record(tmp_path, PAIR_A)["status"] == "complete"
    assert [r["range"] for r in server.gets(dtm_name(PAIR_A))] == [
        None, "bytes=3000-", "bytes=7000-"]
    local = tmp_path / pair_dir(PAIR_A) / dtm_name(PAIR_A)
    assert local.read_bytes() == (site / DTM_A.lstrip("/")).read_bytes()


def test_folders_named_in_lower_case_are_crawled_as_upper_case_ones(
        tmp_path: Path, terrain: Terrain) -> None:
    # As a mirror on a case-blind file system may list them.
    site = tmp_path / "site"
    build_site(site, terrain)
    root = site / DTM_ROOT.strip("/")
    for depth in ("*/*/*", "*/*", "*"):  # pairs, orbit blocks, phases
        for folder in [path for path in root.glob(depth) if path.is_dir()]:
            folder.rename(folder.with_name(folder.name.lower()))
    server = SiteServer(site).start()
    try:
        summary = scrape(options(server, tmp_path / "out"))
    finally:
        server.stop()
    assert (summary.found, summary.fetched, summary.unusable) == (4, 3, 1)
    assert _pair_record(tmp_path / "out", PAIR_A)["dir"].endswith(PAIR_A.lower())


def test_limit_takes_psp_then_esp_by_name(server: SiteServer, tmp_path: Path) -> None:
    # The site lists every folder in reverse order: ESP first, later orbits first.
    summary = scrape(options(server, tmp_path, limit=2))
    assert summary.found == 2
    pairs = json.loads((tmp_path / "manifest.json").read_text())["pairs"]
    assert sorted(p["pair_id"] for p in pairs) == sorted([PAIR_C, PAIR_A])
    assert not [r for r in server.requests if "ORB_011400" in r["path"]]


def test_a_rerun_with_a_smaller_limit_keeps_the_earlier_pairs_listed(server: SiteServer,
                                                                     tmp_path: Path) -> None:
    def listed() -> list[tuple[str, str]]:
        pairs = json.loads((tmp_path / "manifest.json").read_text())["pairs"]
        return [(pair["pair_id"], pair["status"]) for pair in pairs]

    scrape(options(server, tmp_path))
    everything = listed()
    assert scrape(options(server, tmp_path, limit=1)).found == 1
    assert listed() == everything and len(everything) > 1


def test_a_complete_rerun_exits_0_despite_unusable_pairs(
        server: SiteServer, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["--out", str(tmp_path), "--base-url", server.url + DTM_ROOT, "--delay", "0"]
    assert main(base) == 0  # PAIR_NO_DTM lists no DTM: nothing to fetch, no failure
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "failed 0, unusable 1;" in out
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert (manifest["summary"]["failed"], manifest["summary"]["unusable"]) == (0, 1)


def test_a_base_url_with_no_pairs_fails_and_keeps_the_manifest(
        server: SiteServer, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    scrape(options(server, tmp_path))
    before = (tmp_path / "manifest.json").read_text()
    wrong = server.url + DTM_ROOT + "ESP/"  # a real listing, but no phase folders in it
    assert main(["--out", str(tmp_path), "--base-url", wrong, "--delay", "0"]) == 1
    err = capsys.readouterr().err
    assert err == (f"error: no pair folders (PSP/ESP/ORB_*/<pair>/) found under {wrong}; "
                   "check --base-url.\n")
    assert (tmp_path / "manifest.json").read_text() == before


def test_a_folder_that_cannot_be_listed_is_passed_over(server: SiteServer,
                                                       tmp_path: Path) -> None:
    server.extra_links[DTM_ROOT + "ESP/"] = ["ORB_099900_099999/"]  # answers 404
    complete = scrape(options(server, tmp_path / "all"))
    del server.extra_links[DTM_ROOT + "ESP/"]
    assert complete.unlisted == [server.url + DTM_ROOT + "ESP/ORB_099900_099999/"]
    manifest = json.loads((tmp_path / "all" / "manifest.json").read_text())
    assert manifest["summary"]["unlisted"] == complete.unlisted
    # Every pair outside that folder was fetched as on a site without it.
    reference = scrape(options(server, tmp_path / "reference"))
    assert reference.unlisted == [] and complete.found == reference.found > 0
    assert complete.fetched == reference.fetched


def test_hostile_links_are_refused(server: SiteServer, tmp_path: Path) -> None:
    evil_root = tmp_path / "evil"
    (evil_root / "x").mkdir(parents=True)
    (evil_root / "x" / "DTEEC_011384_2185_011661_2185_A09.IMG").write_bytes(b"bad")
    evil = SiteServer(evil_root).start()
    hostile = [f"{evil.url}/x/DTEEC_011384_2185_011661_2185_A09.IMG",  # other host, newer
               "../../../../../../etc/passwd", "/etc/passwd", "%2e%2e/%2e%2e/escape.IMG",
               "..%2F..%2Fescape.IMG", "odd%20name.IMG", "back%5Cslash.IMG",
               "file:///etc/passwd", "sub/dir/DTEEC_011384_2185_011661_2185_A08.IMG"]
    server.extra_links[f"{DTM_ROOT}{pair_dir(PAIR_A)}/"] = hostile
    server.extra_links[DTM_ROOT + "ESP/"] = [f"{evil.url}/x/", "../../../"]
    server.redirects[DTM_A] = f"{evil.url}/x/DTEEC_011384_2185_011661_2185_A09.IMG"
    out = tmp_path / "out"
    try:
        summary = scrape(options(server, out))
    finally:
        evil.stop()
    assert len(summary.refused) == len(hostile) + 1  # "../../../" is a parent: ignored
    assert evil.requests == []
    assert {r["path"].split("/")[1] for r in server.requests} == {"PDS"}
    dtm = _pair_record(out, PAIR_A)["files"][0]
    assert dtm["path"].endswith("_A01.IMG") and dtm["status"] == "failed"
    assert "redirects to another host" in dtm["error"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil", "out"]


@pytest.mark.parametrize("name", ["..", "/etc", "a/b", "", ".hidden", "x\x00y"])
def test_local_names_that_could_escape_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(Refused):
        local_path(tmp_path, ["ESP", name])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("args, code, message", [
    (["--base-url", "ftp://x/"], 2, "error: --base-url must be an http(s) URL, got 'ftp://x/'."),
    (["--limit", "0"], 2, "error: --limit must be at least 1."),
    (["--workers", "99"], 2, "error: --workers must be between 1 and 16."),
    (["--delay", "inf"], 2, "error: --delay and --backoff must be at most 3600.0 seconds."),
    (["--backoff", "nan"], 2, "error: --delay and --backoff must be at most 3600.0 seconds."),
    (["--base-url", "http://127.0.0.1:{port}/PDS/DTM/", "--retries", "0"], 1,
     "error: cannot read the listing at http://127.0.0.1:{port}/PDS/DTM/"),
])
def test_bad_input_is_one_sentence_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], code: int,
        message: str) -> None:
    port = str(_free_port())
    out = tmp_path / "out"
    args = [a.replace("{port}", port) for a in args]
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(["--out", str(out), *args]))
    err = capsys.readouterr().err
    assert exit_info.value.code == code
    assert err.startswith(message.replace("{port}", port)) and err.count("\n") == 1
    assert not out.exists()


def test_out_must_be_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "file")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: --out {tmp_path / 'file'} is not a folder.\n"


def test_ctrl_c_stops_every_download_at_once_and_the_rerun_resumes(
        server: SiteServer, site: Path, tmp_path: Path) -> None:
    server.slow[DTM_A] = 0.2  # 14 kB: about 3 s
    crawl = subprocess.Popen(
        [sys.executable, "-m", "training.scrape", "--out", str(tmp_path), "--base-url",
         server.url + DTM_ROOT, "--delay", "0", "--workers", "2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    part = tmp_path / pair_dir(PAIR_A) / (dtm_name(PAIR_A) + ".part")
    deadline = time.monotonic() + 30
    while not (part.exists() and part.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.05)
    crawl.send_signal(signal.SIGINT)
    _, err = crawl.communicate(timeout=10)  # not after the rest of the queue
    assert crawl.returncode == 130
    assert err.splitlines()[-1] == ("error: interrupted; what was fetched is kept (a file cut "
                                    "short as .part), and the same command resumes.")
    assert not (tmp_path / "manifest.json").exists()
    assert not (part.parent / "pair.json").exists()  # a pair cut short is recorded by the rerun
    kept = part.stat().st_size
    full = (site / DTM_A.lstrip("/")).read_bytes()
    assert 0 < kept < len(full)
    server.reset()
    assert scrape(options(server, tmp_path)).failed == 0
    assert [r["range"] for r in server.gets(dtm_name(PAIR_A))] == [f"bytes={kept}-"]
    assert (tmp_path / pair_dir(PAIR_A) / dtm_name(PAIR_A)).read_bytes() == full


def test_a_local_disk_error_is_one_sentence(server: SiteServer, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "ESP").write_text("a file where a folder must go")
    code = main(["--out", str(tmp_path), "--base-url", server.url + DTM_ROOT, "--delay", "0"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.splitlines()[-1].startswith(f"error: cannot write under {tmp_path}: ")
    assert not (tmp_path / "manifest.json").exists()


def test_an_empty_remote_file_is_fetched_as_an_empty_file(server: SiteServer, site: Path,
                                                          tmp_path: Path) -> None:
    (site / "PDS" / "empty.LBL").write_bytes(b"")
    dest = tmp_path / "empty.LBL"
    scraper = Scraper(options(server, tmp_path))
    assert scraper.download(server.url + "/PDS/empty.LBL", dest, 0) == "fetched"
    assert dest.read_bytes() == b"" and not (tmp_path / "empty.LBL.part").exists()


@pytest.mark.parametrize("asked, status", [("2", 503), ("date", 503), ("2", 429)])
def test_a_busy_server_is_given_the_time_it_asks_for(server: SiteServer, site: Path,
                                                     tmp_path: Path, asked: str,
                                                     status: int) -> None:
    later = email.utils.format_datetime(datetime.now(timezone.utc) + timedelta(seconds=3),
                                        usegmt=True)
    server.busy[DTM_A] = [later if asked == "date" else asked]
    server.busy_status = status  # 503 Service Unavailable, 429 Too Many Requests
    summary = scrape(options(server, tmp_path))  # retries 10 ms apart unless asked otherwise
    assert summary.failed == 0
    busy, served = [r["time"] for r in server.requests if r["path"] == DTM_A
                    and r["method"] == "GET"]
    assert served - busy >= 1.9  # the whole seconds asked (a date: to the second)
    assert _asked_wait(urllib.error.HTTPError("u", 503, "busy", {"Retry-After": "86400"}, None)) \
        == MAX_ASKED_WAIT


def test_a_stopping_crawl_starts_no_request_and_does_not_wait(server: SiteServer) -> None:
    stopping = threading.Event()
    http = Http(workers=1, delay=30.0, retries=3, backoff=30.0, stopping=stopping)
    http.request(server.url + DTM_ROOT)  # the next may start only 30 s later
    stopping.set()
    started = time.monotonic()
    with pytest.raises(Stopped):
        http.retrying(lambda: http.request(server.url + DTM_ROOT))
    assert time.monotonic() - started < 5
    assert len(server.requests) == 1
