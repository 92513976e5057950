"""The fuzz corpus: corrupt variants of every real format through read_image, info, condition and infer.

The corpus (truncations, flipped bytes in header and data, lying sizes, wrong compression,
empty files, folders, NaN/Inf pixels, huge dimensions; see ``image_corpus.build_fuzz_corpus``)
is generated into a temporary folder once per session. Every case must end in one line that
names the file and the problem, never a traceback or a hang, and never count as a success:

* ``read_image`` in this process, each case under a time limit;
* one ``xrais info``, one ``xrais condition`` and one ``xrais infer`` over all the cases at
  once (each file gives its own error line or row; the exit status is 1).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from image_corpus import FuzzCase, build_fuzz_corpus
from xrais.errors import XraisError

CASE_TIMEOUT_S = 60.0
CLI_TIMEOUT_S = 600

SOURCES = ["real/pilatus6m/thau_3_2_0001.cbf", "real/pilatus6m/thau_3_2_0003.cbf.bz2",
           "real/eiger16m/dlsnxs2cbf_therm_0001.cbf.gz", "real/rayonix340/hit-20181213155134902.cbf",
           "real/cspad/idx-20130301060858401.cbf", "real/adsc/adsc.img.bz2",
           "real/eiger2_16m_stream/5291452/image000044", "real/eiger2_16m_stream/5291452/header"]


@dataclass
class Outcome:
    case: FuzzCase
    error: str = ""  # the one-line message ("" when the file read)
    error_type: str = ""
    crashed: bool = False
    hung: bool = False

    @property
    def failed(self) -> bool:
        return bool(self.error) or self.hung


def _read_with_limit(case: FuzzCase) -> Outcome:
    """``read_image`` on a worker thread; a case that does not end within the limit is a hang."""
    from xrais.conditioning import read_image

    out = Outcome(case)

    def work() -> None:
        try:
            read_image(case.path)
        except XraisError as exc:
            out.error, out.error_type = str(exc), type(exc).__name__
        except BaseException as exc:  # anything else is a crash of the reader
            out.error, out.error_type, out.crashed = f"{type(exc).__name__}: {exc}", type(exc).__name__, True

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(CASE_TIMEOUT_S)
    out.hung = worker.is_alive()
    return out


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, shared_data) -> list[FuzzCase]:
    for rel in SOURCES:
        shared_data(rel)  # skip (or fail in CI) naming a missing source
    real = shared_data(SOURCES[0]).parents[1]
    return build_fuzz_corpus(real, tmp_path_factory.mktemp("fuzz_corpus"))


@pytest.fixture(scope="session")
def outcomes(corpus) -> list[Outcome]:
    return [_read_with_limit(case) for case in corpus]


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PYTHONUNBUFFERED="1", COLUMNS="250")


def _xrais(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xrais.cli", *argv], capture_output=True, text=True, env=_env(),
                          timeout=CLI_TIMEOUT_S)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _failing(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.failed and o.case.for_cli_lists]


def test_corpus_covers_every_kind_of_damage(corpus):
    kinds = " ".join(c.damage for c in corpus)
    for word in ("truncated", "flipped in the header", "flipped in the data", "X-Binary-Size", "width",
                 "huge", "compression", "empty", "directory", "NaN", "Inf", "gzip", "bzip2", "missing"):
        assert word in kinds, word
    assert {c.source for c in corpus} >= {Path(s).name for s in SOURCES} | {"NXmx"}
    assert len(corpus) >= 80


def test_read_image_gives_one_clean_line_for_every_case(outcomes):
    problems = []
    for o in outcomes:
        c = o.case
        label = f"{c.path.name} [{c.damage}]"
        if o.hung:
            problems.append(f"{label}: no answer within {CASE_TIMEOUT_S:.0f} s")
        elif o.crashed:
            problems.append(f"{label}: crashed with {o.error}")
        elif o.error:
            if "\n" in o.error or c.path.name not in o.error:
                problems.append(f"{label}: message is not one line naming the file: {o.error!r}")
            if "unexpected" in o.error:
                problems.append(f"{label}: a failure no check foresaw: {o.error}")
        elif c.must_fail:
            problems.append(f"{label}: read without complaint")
    clean = sum(1 for o in outcomes if o.error and not o.crashed and not o.hung)
    print(f"\nfuzz corpus: {len(outcomes)} cases, {clean} refused with a clean one-line error, "
          f"{sum(not o.failed for o in outcomes)} read (damage the format cannot notice), {len(problems)} problems")
    assert not problems, "\n".join(problems)


def test_info_reports_each_failed_file_once_and_exits_1(corpus, outcomes):
    proc = _xrais("info", *(str(c.path) for c in corpus))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = _error_lines(proc.stderr)
    failed = [o for o in outcomes if o.failed]
    assert len(lines) == len(failed), "\n".join(lines)
    for o in failed:
        assert any(o.case.path.name in line for line in lines), o.case.path
    for o in outcomes:
        if not o.failed:
            assert not any(f"{o.case.path.name}:" in line for line in lines)


def test_condition_reports_each_failed_file_and_keeps_the_rest(corpus, outcomes, tmp_path):
    from xrais.io import list_shards, read_shard

    cases = [c for c in corpus if c.for_cli_lists]
    out = tmp_path / "conditioned"
    proc = _xrais("condition", *(str(c.path) for c in cases), "--out", str(out))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = _error_lines(proc.stderr)
    stored = set()
    for shard in list_shards(out, "conditioned"):
        stored.update(Path(p) for p in read_shard(shard, images=False)[1]["source/path"])
    for o in outcomes:
        if not o.case.for_cli_lists:
            continue
        name = o.case.path.name
        if o.failed:
            assert o.case.path.resolve() not in stored
            assert any(name in line for line in lines), name
        else:  # read in-process: conditioned, or refused with its own line (never silently dropped)
            assert o.case.path.resolve() in stored or any(f"{name}:" in line for line in lines), name
    assert len(lines) >= len(_failing(outcomes))


def test_infer_gives_an_error_row_for_each_failed_file_and_exits_1(corpus, outcomes, tmp_path):
    import torch

    from xrais.models import build_model, save_checkpoint

    torch.manual_seed(0)
    model = save_checkpoint(build_model("resnet18", "resolution", input_std=64.0), tmp_path / "tiny.safetensors")
    cases = [c for c in corpus if c.for_cli_lists]
    out = tmp_path / "infer"
    proc = _xrais("infer", *(str(c.path) for c in cases), "--model", str(model), "--out", str(out),
                  "--quadrants", "1", "--device", "cpu", "--format", "csv")
    assert "Traceback" not in proc.stderr + proc.stdout
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_file: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_file.setdefault(str(Path(row["file"]).resolve()), []).append(row)
    for o in outcomes:
        if not o.case.for_cli_lists:
            continue
        got = by_file.get(str(o.case.path.resolve()))
        assert got, f"no row for {o.case.path}"
        if o.failed:
            assert all(r["error"] for r in got), (o.case.path, got)
            assert all("\n" not in r["error"] and o.case.path.name in r["error"] for r in got), got
    assert proc.returncode == 1, proc.stderr[-2000:]
