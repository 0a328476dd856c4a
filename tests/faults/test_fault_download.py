"""A hub that fails: answers 500 for a while, cuts a file half way, or never answers well. The download job's
function (mmcal.hub.download.resolve, real huggingface_hub against a real HTTP server on 127.0.0.1, tests/faults/
fakehub.py) retries transient failures with backoff, ends with the complete files, and otherwise fails with an
error naming the source (config key, repository, revision) and the endpoint, after a bounded number of tries."""

from __future__ import annotations

import hashlib
import json
import os

from faults.fakehub import COMMIT, FakeHub
from faults.faultkit import PYTHON, run

REPO = "acme/tiny-model"
FILES = {"config.json": b'{"model_type": "llama"}\n', "weights.bin": os.urandom(3 << 20)}
# The retry schedule shortened for the test (the job's own is 2, 8, 30 s); the function is otherwise as run.
RESOLVE = """
import json, sys
from mmcal.hub import download
download.RETRY_WAITS_S = (0.05, 0.1, 0.2)
source = {"key": "tiny", "path": sys.argv[1], "revision": None, "type": "model"}
try:
    print("RECORD " + json.dumps(download.resolve(source, offline=False)))
except Exception as exc:
    print(f"FAILED {type(exc).__name__}: {exc}")
"""


def _resolve(hub, tmp_path):
    script = tmp_path / "resolve.py"
    script.write_text(RESOLVE)
    env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "HF_HOME": tmp_path / "hf", "HF_HUB_ETAG_TIMEOUT": 5}
    rc, text = run([PYTHON, str(script), REPO], tmp_path, timeout=120, **env)
    assert rc == 0, text
    return text


def _record(text):
    lines = [line for line in text.splitlines() if line.startswith("RECORD ")]
    assert lines, text
    return json.loads(lines[0][len("RECORD ") :])


def _check_files(record):
    from pathlib import Path

    folder = Path(record["folder"])
    assert record["commit"] == COMMIT and sorted(record["files"]) == sorted(FILES)
    for name, data in FILES.items():
        assert hashlib.sha256((folder / name).read_bytes()).digest() == hashlib.sha256(data).digest(), name


def test_server_errors_then_success(tmp_path):
    with FakeHub(REPO, FILES) as hub:
        hub.fail_500 = 2
        text = _resolve(hub, tmp_path)
    _check_files(_record(text))
    assert "retry 1 in 0.05 s" in text and "tiny: acme/tiny-model@main: download failed" in text, text


def test_a_download_cut_half_way_ends_complete(tmp_path):
    with FakeHub(REPO, FILES) as hub:
        hub.cut = 2
        text = _resolve(hub, tmp_path)
        cuts = [entry for entry in hub.log if entry[2] == -1]
    assert len(cuts) == 2, hub.log
    _check_files(_record(text))
    blobs = list((tmp_path / "hf").rglob("*.incomplete"))
    assert blobs == []  # no partial download left for a later run to take


def test_a_hub_that_keeps_failing_is_an_error_naming_the_source(tmp_path):
    with FakeHub(REPO, FILES) as hub:
        hub.fail_500 = 10**6
        text = _resolve(hub, tmp_path)
        n_requests = len(hub.log)
    failed = [line for line in text.splitlines() if line.startswith("FAILED ")]
    assert failed and failed[0].startswith("FAILED DataError: tiny: acme/tiny-model@main: download from "), text
    assert f"{hub.endpoint} failed 4 times" in failed[0] and "500" in failed[0], failed
    assert text.count("retry ") == 3 and n_requests <= 40  # bounded: 4 tries, not a loop
    assert not list((tmp_path / "hf").rglob("weights.bin"))
