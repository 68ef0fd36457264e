"""The artifact store on an fsspec URL: fsspec's in-memory filesystem for the logic, a local S3 (moto) for real.

The S3 tests start ``moto_server`` on 127.0.0.1 with IAM authentication on, so a wrong
secret is refused as it would be by AWS. They need the test extras ``moto[server]`` and
``s3fs`` and are skipped without them.
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiln.errors import KilnError
from storage import remote
from storage.remote import RemoteStore
from storage.remote_check import dump_job_files, http_fingerprint
from storage.store import Build, artifact_key, open_store
from tasks.clean import CleanConfig, clean  # imported here: importing Prefect resets logging handlers (caplog's too)
from tasks.download import DownloadConfig, SourceSpec, download
from tests.conftest import REPO_ROOT, gensim_file
from tests.prefect_server import free_port, server_env

ENWIKI = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def write_units(build: Build, calls: list[str], *, fail_on: str | None = None, text: str = "x") -> None:
    for unit in ("a", "b"):
        if build.unit_done(unit):
            continue
        if unit == fail_on:
            raise RuntimeError(f"boom in {unit}")
        calls.append(unit)
        (build.dir / "sub").mkdir(exist_ok=True)
        (build.dir / "sub" / f"{unit}.txt").write_text(text * 10)
        build.mark_done(unit)
    build.counts["units"] = 2


def forget_local_copies(store: RemoteStore) -> None:
    """What a fresh machine sees: an empty cache directory."""
    for child in store.root.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
    remote._MATERIALIZED.clear()


@pytest.fixture
def mem_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RemoteStore]:
    """A remote store in fsspec's process-wide memory filesystem, with its own bucket and cache."""
    import fsspec

    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))
    bucket = f"bucket-{uuid.uuid4().hex[:8]}"
    fs = fsspec.filesystem("memory")
    fs.mkdir(f"/{bucket}")
    store = open_store(f"memory://{bucket}/kiln")
    assert isinstance(store, RemoteStore)
    yield store
    fs.rm(f"/{bucket}", recursive=True)
    remote._MATERIALIZED.clear()


# -- the logic, on the in-memory filesystem --------------------------------------------------------
def test_build_uploads_manifest_last_and_a_fresh_cache_downloads_it(mem_store: RemoteStore) -> None:
    calls: list[str] = []
    key = artifact_key("s", "1", {"v": 1}, [])
    ref = mem_store.produce("s", "1", {"v": 1}, [], lambda b: write_units(b, calls))
    token = mem_store.manifest(ref)["build_id"]
    assert ref.uri == f"{mem_store.url}/s/{key}" and calls == ["a", "b"]
    stored = sorted(p.split(f"/{key}/", 1)[1] for p in mem_store.fs.find(mem_store._rpath("s", key)))
    assert stored == [f"data-{token}/sub/a.txt", f"data-{token}/sub/b.txt", "manifest.json"]

    forget_local_copies(mem_store)
    assert (ref.path / "sub" / "a.txt").read_text() == "x" * 10  # downloaded on first use
    mem_store.verify(ref)
    again = open_store(mem_store.location)  # what a task receives as store_root
    assert isinstance(again, RemoteStore) and again.url == mem_store.url
    assert again.produce("s", "1", {"v": 1}, [], lambda b: write_units(b, calls)) == ref
    assert calls == ["a", "b"]  # nothing rebuilt


def test_killed_build_resumes_and_is_not_visible_remotely(mem_store: RemoteStore) -> None:
    calls: list[str] = []
    with pytest.raises(RuntimeError, match="boom"):
        mem_store.produce("s", "1", {}, [], lambda b: write_units(b, calls, fail_on="b"))
    key = artifact_key("s", "1", {}, [])
    assert mem_store.get("s", key) is None and not mem_store.fs.exists(mem_store._rpath("s", key, "manifest.json"))
    mem_store.produce("s", "1", {}, [], lambda b: write_units(b, calls))
    assert calls == ["a", "b"]  # "a" was not redone


def test_failed_upload_leaves_no_artifact_and_the_retry_uploads_without_rebuilding(
    mem_store: RemoteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_pipe = mem_store.fs.pipe_file

    def broken_pipe(*args: Any, **kwargs: Any) -> None:
        raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(mem_store.fs, "pipe_file", broken_pipe)
    with pytest.raises(KilnError, match="uploading s/.* failed: ConnectionResetError") as err:
        mem_store.produce("s", "1", {}, [], lambda b: write_units(b, calls))
    assert "\n" not in str(err.value)
    key = artifact_key("s", "1", {}, [])
    assert mem_store.get("s", key) is None  # files without a manifest are no artifact
    monkeypatch.setattr(mem_store.fs, "pipe_file", real_pipe)
    ref = mem_store.produce("s", "1", {}, [], lambda b: write_units(b, calls))
    assert calls == ["a", "b"] and mem_store.get("s", key) == ref


def test_damaged_remote_file_is_refused_on_download(mem_store: RemoteStore) -> None:
    ref = mem_store.produce("s", "1", {}, [], lambda b: write_units(b, []))
    manifest = mem_store.manifest(ref)
    mem_store.fs.pipe_file(f"{mem_store._data_prefix('s', ref.key, manifest)}/sub/a.txt", b"y" * 10)  # same size
    forget_local_copies(mem_store)
    with pytest.raises(KilnError, match="a.txt does not match its manifest"):
        _ = ref.path
    assert not mem_store.mirror.final_dir("s", ref.key).exists()


def test_two_machines_building_one_key_never_mix_files(tmp_path: Path, mem_store: RemoteStore,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # Machine A finishes its local build; machine B builds the same key (different bytes, as
    # nondeterministic GPU training would) and uploads first; then A uploads. The manifest
    # written last names one complete file set, and gc drops the other.
    key = artifact_key("s", "1", {}, [])
    a = mem_store
    a.mirror.produce("s", "1", {}, [], lambda b: write_units(b, [], text="A"))
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "machine-b"))
    b = open_store(a.url)
    assert isinstance(b, RemoteStore) and b.root != a.root
    b.produce("s", "1", {}, [], lambda build: write_units(build, [], text="B"))
    a._upload("s", key)
    assert len(a.fs.ls(a._rpath("s", key))) == 3  # manifest + two build prefixes
    forget_local_copies(b)
    assert (b.ref("s", key).path / "sub" / "a.txt").read_text() == "A" * 10
    doomed = a.gc({f"s/{key}"})
    assert len(doomed) == 1 and "data-" in str(doomed[0]) and a.get("s", key) is not None


def test_gc_keeps_what_recent_runs_used_remotely_and_in_the_cache(mem_store: RemoteStore) -> None:
    old = mem_store.produce("s", "1", {"v": 1}, [], lambda b: write_units(b, []))
    new = mem_store.produce("s", "1", {"v": 2}, [], lambda b: write_units(b, []))
    mem_store.record_run("first", {"s": old})
    mem_store.record_run("second", {"s": new})
    assert [r["label"] for r in mem_store.recent_runs(5)] == ["first", "second"]
    keep = {key for run in mem_store.recent_runs(1) for key in run["artifacts"].values()}
    assert mem_store.gc(keep, dry_run=True) and mem_store.get("s", old.key) is not None
    mem_store.gc(keep)
    assert mem_store.get("s", old.key) is None and mem_store.get("s", new.key) == new
    assert not mem_store.mirror.final_dir("s", old.key).exists()
    assert [m["key"] for m in mem_store.list()] == [new.key]
    assert [r["label"] for r in mem_store.recent_runs(5)] == ["first", "second"]  # the log itself stays


def test_missing_bucket_fails_before_building(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))
    store = open_store(f"memory://no-such-bucket-{uuid.uuid4().hex[:6]}/kiln")
    calls: list[str] = []
    with pytest.raises(KilnError, match="bucket .* does not exist"):
        store.produce("s", "1", {}, [], lambda b: write_units(b, calls))
    assert calls == []


def test_credentials_in_the_url_are_refused_without_echoing_them() -> None:
    with pytest.raises(KilnError) as err:
        open_store("s3://AKIAEXAMPLE:hunter2-secret@bucket/kiln")
    assert "hunter2" not in str(err.value) and "AKIAEXAMPLE" not in str(err.value)


# -- a real S3 protocol: moto's server on 127.0.0.1 ------------------------------------------------------
@pytest.fixture(scope="module")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """moto_server with IAM auth: one user whose key may do s3:*, and a bucket ``kiln``."""
    pytest.importorskip("s3fs", reason="needs the s3 extra (s3fs)")
    boto3 = pytest.importorskip("boto3", reason="needs moto[server] (test extra)")
    pytest.importorskip("moto.server", reason="needs moto[server] (test extra)")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_file = tmp_path_factory.mktemp("moto") / "moto.log"
    # The first 3 requests (create user, key and policy) are let through; every later one is authenticated.
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    with open(log_file, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, log_file.read_text()
            time.sleep(0.2)
        setup = {"endpoint_url": endpoint, "region_name": "us-east-1",
                 "aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
        iam = boto3.session.Session().client("iam", **setup)
        iam.create_user(UserName="kiln")
        key = iam.create_access_key(UserName="kiln")["AccessKey"]
        iam.put_user_policy(UserName="kiln", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        creds = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
                 "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
        s3 = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                            aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                                            aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"])
        s3.create_bucket(Bucket="kiln")
        yield creds
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def s3_env(moto_s3: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    import s3fs

    for name, value in moto_s3.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))
    s3fs.S3FileSystem.clear_instance_cache()  # instances remember the credentials they were made with
    yield moto_s3
    s3fs.S3FileSystem.clear_instance_cache()
    remote._MATERIALIZED.clear()


def test_download_and_clean_stages_on_s3_keep_secrets_out_of_manifests_and_logs(
    s3_env: dict[str, str], caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)  # everything any library logs, botocore's request dumps included
    root = f"s3://kiln/run-{uuid.uuid4().hex[:6]}"
    store = open_store(root)
    raw = download(DownloadConfig(sources=[SourceSpec("en.xml.bz2", str(gensim_file(ENWIKI)))]), store)
    assert raw.uri.startswith(root)
    assert isinstance(store, RemoteStore)
    forget_local_copies(store)  # clean runs "elsewhere": it must fetch its input from S3
    docs = clean(raw, CleanConfig(docs_per_shard=40), open_store(store.location))
    assert store.get("clean", docs.key) == docs and store.manifest(docs)["counts"]["documents"] > 0
    forget_local_copies(store)
    store.verify(docs)

    secret, key_id = s3_env["AWS_SECRET_ACCESS_KEY"], s3_env["AWS_ACCESS_KEY_ID"]
    manifests = b"".join(store.fs.cat_file(p) for p in store.fs.find(root) if p.endswith("manifest.json"))
    manifests += b"".join(p.read_bytes() for p in store.root.rglob("manifest.json"))
    assert manifests and secret.encode() not in manifests and key_id.encode() not in manifests
    out, err = capfd.readouterr()
    assert secret not in caplog.text + out + err
    kiln_logs = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("kiln"))
    assert "uploaded download/" in kiln_logs and key_id not in kiln_logs


def test_wrong_secret_is_one_clear_line_and_leaves_nothing(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    root = f"s3://kiln/bad-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    calls: list[str] = []
    store = open_store(root)
    with pytest.raises(KilnError) as err:
        store.produce("s", "1", {}, [], lambda b: write_units(b, calls))
    message = str(err.value)
    assert "access denied" in message and "AWS_SECRET_ACCESS_KEY" in message and "\n" not in message
    assert "not-the-secret" not in message and calls == []
    s3 = boto3.session.Session().client(
        "s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1",
        aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"])
    assert s3.list_objects_v2(Bucket="kiln", Prefix=root.removeprefix("s3://kiln/")).get("KeyCount") == 0
    assert not [p for p in store.root.rglob("*") if p.name == "manifest.json"]


# -- has the source changed? ------------------------------------------------------------------------------
class _Handler(http.server.SimpleHTTPRequestHandler):
    refuse_head = False

    def do_HEAD(self) -> None:
        if self.refuse_head:
            self.send_error(405)
            return
        super().do_HEAD()

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass


def test_http_fingerprint_changes_with_the_file_and_survives_servers_refusing_head(tmp_path: Path) -> None:
    dump = tmp_path / "dump.xml.bz2"
    dump.write_bytes(b"first dump")
    handler = type("H", (_Handler,), {})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: handler(*a, directory=str(tmp_path)))  # type: ignore[misc]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/dump.xml.bz2"
    try:
        first = http_fingerprint(url)
        assert first and first == http_fingerprint(url)
        handler.refuse_head = True
        assert http_fingerprint(url) == first  # the ranged GET sees the same Last-Modified and total length
        dump.write_bytes(b"second dump, longer")
        os.utime(dump, (time.time() + 5, time.time() + 5))
        assert http_fingerprint(url) != first
        with pytest.raises(KilnError, match="HTTP 404"):
            handler.refuse_head = False
            http_fingerprint(url.replace("dump", "missing"))
    finally:
        server.shutdown()


def test_dump_status_refuses_an_unfinished_dump() -> None:
    status = {"jobs": {"articlesmultistreamdump": {"status": "done", "files": {
        "enwiki-20240601-pages-articles-multistream.xml.bz2": {"size": 10, "sha1": "ab"}}}}}
    assert list(dump_job_files(status)) == ["enwiki-20240601-pages-articles-multistream.xml.bz2"]
    status["jobs"]["articlesmultistreamdump"]["status"] = "in-progress"
    with pytest.raises(KilnError, match="'in-progress', not 'done'"):
        dump_job_files(status)


@pytest.mark.slow
def test_kiln_run_on_s3_resumes_on_a_fresh_machine_from_cached_stages(s3_env: dict[str, str], tmp_path: Path,
                                                                      prefect_api: str) -> None:
    # Run 1 builds download and clean into S3. Run 2 starts with an empty local cache (another
    # machine, same Prefect home): download and clean are Cached, and the tokenizer stage fetches
    # clean's documents from S3 through the ref Prefect hands it back from its cache.
    env = {**server_env(tmp_path / "prefect", prefect_api), **s3_env,
           "KILN_HOME": f"s3://kiln/cli-{uuid.uuid4().hex[:6]}", "KILN_CACHE_DIR": str(tmp_path / "cache")}

    def kiln(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    def run(until: str) -> dict[str, str]:
        kiln("run", "configs/demo.toml", "--until", until, "--summary-json", str(tmp_path / "s.json"),
             "-s", "tokenizer.vocab_size=1000")
        stages = json.loads((tmp_path / "s.json").read_text())["stages"]
        assert all(info["artifact"].startswith(env["KILN_HOME"]) for info in stages.values())
        return {stage: info["state"] for stage, info in stages.items()}

    assert run("clean") == {"download": "Completed", "clean": "Completed"}
    shutil.rmtree(tmp_path / "cache")
    assert run("tokenizer") == {"download": "Cached", "clean": "Cached", "tokenizer": "Completed"}
    listed = kiln("artifacts", "ls").stdout
    assert all(stage in listed for stage in ("download", "clean", "tokenizer"))
    assert "would delete 0 entries" in kiln("artifacts", "gc", "--keep-runs", "1").stdout
