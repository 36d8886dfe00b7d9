"""Every case of tests/reliability_cases.py through the real CLI; docs/reliability.md is what happened.

The rules checked on each case: the expected exit code; exactly one `error:` line, and it is the last
thing written (a list of problems — bad CSV rows, several config keys — adds one indented line per
problem after it); no Python traceback; the message contains the fragment naming the file, field or
fix; and the case's output folder was not created (nothing is written before validation).
Regenerate the table after changing a message: `T2VU_WRITE_DOCS=1 pytest tests/test_reliability.py`.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path
from unittest import mock

import pytest
import torch

from pipelines.cli import entry as cli
from tests.reliability_cases import CASES, Case
from unlearn.eraser import EraserMeta, EraserSet, save_eraser

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "reliability.md"


def _make_eraser(path: Path, kind: str) -> None:
    hidden = 64 if kind == "size" else 32  # the tiny model's hidden size is 32 (2 heads x 16)
    fingerprint = {}
    if kind == "otherbase":  # trained on a tiny CogVideoX of another seed: same config and shapes, other weights
        from unlearn.base_fingerprint import of_model_dir
        from unlearn.models.tiny import make_tiny_model

        fingerprint = of_model_dir(make_tiny_model(path.parent / "tiny-seed1", seed=1), source="training")
    es = EraserSet(EraserMeta(hidden_size=hidden, rank=2, num_blocks=2, block_indices=[0, 1],
                              base_model="tiny-seed1" if fingerprint else "", base_fingerprint=fingerprint))
    if kind == "nan":
        # save_eraser refuses non-finite weights, so the damage is done to the saved file, as a diverged
        # training on another tool (or a hand edit) would leave it
        from safetensors.torch import load_file, save_file

        d = save_eraser(es, path)
        state = load_file(d / "eraser.safetensors")
        first = sorted(state)[0]
        state[first] = torch.full_like(state[first], float("nan"))
        save_file(state, d / "eraser.safetensors")
        return
    d = save_eraser(es, path)
    if kind in ("json", "weights"):
        target = d / ("eraser_config.json" if kind == "json" else "eraser.safetensors")
        target.write_bytes(target.read_bytes()[:20])


def _make_cache(root: Path, kind: str) -> None:
    """The embedding cache `t2vu train -c configs/tiny.yaml` fills, with one entry damaged as `kind` says."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from unlearn.config import load_eraser_training_config
    from unlearn.session import load_data, model_dir_of
    from unlearn.embedding_cache import EmbeddingCache

    cfg = load_eraser_training_config(ROOT / "configs" / "tiny.yaml")
    model_dir = model_dir_of(cfg)
    cache = EmbeddingCache(root, model_dir, 16, cfg.model.dtype, family=cfg.model.family)
    cache.fill(load_data(cfg, model_dir, 16).all_prompts())
    a, b = cache._path("a naked body"), cache._path("a person")
    if kind == "swapped":
        tmp = a.with_suffix(".swap")
        a.rename(tmp)
        b.rename(a)
        tmp.rename(b)
    elif kind == "zeroed":
        with safe_open(str(b), framework="pt") as f:
            meta, emb = f.metadata(), f.get_tensor("emb")
        save_file({"emb": torch.zeros_like(emb)}, str(b), metadata=meta)
    elif kind == "truncated":
        b.write_bytes(b.read_bytes()[:40])
    else:
        raise ValueError(kind)


def _make_model(path: Path, kind: str) -> None:
    """A copy of the built-in tiny model, damaged: KIND index-truncated (model_index.json cut short),
    no-layers (transformer/config.json num_layers: 0), nan (a NaN transformer weight)."""
    import json
    import shutil

    from unlearn.models.registry import resolve_model_path

    shutil.copytree(resolve_model_path("builtin:tiny"), path)
    if kind == "index-truncated":
        index = path / "model_index.json"
        index.write_bytes(index.read_bytes()[:40])
    elif kind == "no-layers":
        cfg = path / "transformer" / "config.json"
        cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "num_layers": 0}))
    elif kind == "nan":
        from safetensors.torch import load_file, save_file

        weights = path / "transformer" / "diffusion_pytorch_model.safetensors"
        state = load_file(weights)
        first = sorted(state)[0]
        state[first] = torch.full_like(state[first], float("nan"))
        save_file(state, weights)
    else:
        raise ValueError(kind)


def _make_sqlite(path: Path, kind: str) -> None:
    """KIND readonly: a SQLite database SQLite itself opens read-only (header write version 3), as it does a
    database on a read-only mount or without write permission, whoever runs the test (root included)."""
    import sqlite3

    con = sqlite3.connect(path)
    con.execute("CREATE TABLE experiments (name TEXT)")
    con.commit()
    con.close()
    if kind == "readonly":
        raw = bytearray(path.read_bytes())
        raw[18] = 3  # file format write version > 2: "the database file must be treated as read-only"
        path.write_bytes(bytes(raw))
    elif kind != "ok":
        raise ValueError(kind)


_WEB: list[str] = []


def _web_address() -> str:
    """`{web}`: a web server on 127.0.0.1 that answers every request with an HTML page (not a Ray Jobs API)."""
    if not _WEB:
        import http.server
        import threading

        class Page(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = b"<html>a web page, not the Ray Jobs API</html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        _WEB.append(f"http://127.0.0.1:{server.server_address[1]}")
    return _WEB[0]


def _fill(text: str, tmp: Path) -> str:
    if "{web}" in text:
        text = text.replace("{web}", _web_address())
    return text.replace("{tmp}", str(tmp)).replace("{root}", str(ROOT))


class _Exploit:
    """Unpickling this runs a shell command (as a hostile eraser_weights.pt would)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@contextlib.contextmanager
def _file_size_limit(limit: int | None):
    """RLIMIT_FSIZE for the case (a full disk without a tiny tmpfs): writes past `limit` bytes fail with EFBIG
    (SIGXFSZ ignored, as it would otherwise kill the test process instead)."""
    if limit is None:
        yield
        return
    import resource
    import signal

    from unlearn.models.registry import resolve_model_path

    resolve_model_path("builtin:tiny")  # built into the session cache first: the limit is for the command's writes
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, handler)


def run_case(case: Case, tmp: Path) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    for name, content in case.files.items():
        p = tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if content.startswith("@symlink:"):  # a symbolic link to the target (which may not exist)
            os.symlink(_fill(content.partition(":")[2], tmp), p)
        elif content.startswith("@pickle-exploit:"):  # a pickle that runs the command when unpickled
            import pickle

            p.write_bytes(pickle.dumps(_Exploit(_fill(content.partition(":")[2], tmp))))
        elif content.startswith("@eraser:"):  # an eraser directory of that kind, not a text file
            _make_eraser(p, content.partition(":")[2])
        elif content.startswith("@cache:"):  # a filled embedding cache, damaged
            _make_cache(p, content.partition(":")[2])
        elif content.startswith("@model:"):  # a damaged copy of the tiny model
            _make_model(p, content.partition(":")[2])
        elif content.startswith("@sqlite:"):
            _make_sqlite(p, content.partition(":")[2])
        elif content.startswith("@utf16:"):  # the text, saved as UTF-16 (with its byte-order mark)
            p.write_text(_fill(content.partition(":")[2], tmp), encoding="utf-16")
        else:
            p.write_text(_fill(content, tmp))
    argv = [_fill(a, tmp) for a in case.argv]
    err, out = io.StringIO(), io.StringIO()
    # the CLI may set environment variables (submit turns on RAY_AUTH_MODE=token when a token file
    # exists): restored after each case, or they leak into the rest of the suite's Ray clusters
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), mock.patch.dict(os.environ), \
            _file_size_limit(case.fsize):
        rc = cli.main(argv)
    lines = err.getvalue().rstrip("\n").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
    message = lines[starts[-1]:] if starts else []
    # a write that failed part-way must not leave its temporary file (fsutil's `.<name>.<random>.tmp<suffix>`)
    # (a writer thread still finishing, as the eval's video writer can be when a row fails, gets the few seconds a
    # real `t2vu` process gives it at exit, where the interpreter joins such threads)
    for _ in range(60):
        temps = sorted(str(q.relative_to(tmp)) for q in tmp.rglob(".*") if ".tmp" in q.name)
        if not temps:
            break
        import time

        time.sleep(0.25)
    return {"rc": rc, "stderr": err.getvalue(), "starts": starts, "message": message, "lines": lines, "temps": temps}


def _show(text: str, tmp: Path) -> str:
    from unlearn.models.registry import cache_root

    text = text.replace(str(tmp), "$TMP").replace(str(cache_root()), "$T2VU_CACHE")
    if _WEB:
        text = text.replace(_WEB[0], "http://127.0.0.1:$PORT")
    text = text.replace(str(ROOT) + "/", "").replace(str(ROOT), ".")
    text = re.sub(r"\s+\(--debug shows the traceback\)$", "", text)
    text = re.sub(r"/\.([\w-]+)\.[A-Za-z0-9_]{8}/", r"/.\1.<random>/", text)  # fsutil's temporary folder names
    return text.replace("|", "\\|")


def render(results: list[tuple[Case, dict, Path]]) -> str:
    head = [
        "# Reliability: what the tool says when input is wrong",
        "",
        "Generated by `tests/test_reliability.py` from the cases in `tests/reliability_cases.py`, each run through",
        "the real `t2vu` CLI; the test fails if this file differs from what the commands print now",
        "(regenerate: `T2VU_WRITE_DOCS=1 pytest tests/test_reliability.py`). Every case below ends in the exit",
        "code shown, one `error:` line naming the file, field or fix (a list of bad rows or keys adds one line",
        "each, shown here joined by ⏎), no traceback (`--debug` or `T2VU_DEBUG=1` shows it), and no output folder",
        "left behind. `$TMP` is the case's scratch folder.",
        "",
        f"{len(results)} cases. Faults beyond bad input are separate tests: SIGKILL of `t2vu train` and of a Ray",
        "Train worker (`tests/test_distributed.py`), SIGKILL and interruption of `t2vu eval`",
        "(`tests/test_eval_stage.py`, `tests/test_eval_orphans.py`), Ctrl-C = exit 130 (`tests/test_cli_errors.py`,",
        "`tests/test_ray_signals.py`), SIGKILL of `t2vu train --distributed` / `t2vu tune` takes their whole Ray session",
        "along (`tests/test_ray_signals.py`), a search that fails late ends its MLflow parent run FAILED or KILLED",
        "(`tests/test_search_parent_status.py`). A disk-full case runs under a file-size limit (RLIMIT_FSIZE) and must",
        "leave no temporary file.",
        "",
        "| # | area | case | command | exit | message |",
        "|---|---|---|---|---|---|",
    ]
    rows = []
    for i, (case, res, tmp) in enumerate(results, 1):
        cmd = "t2vu " + " ".join(a if " " not in a else repr(a) for a in (_fill(x, tmp) for x in case.argv))
        msg = " ⏎ ".join(line.strip() for line in res["message"])
        rows.append(f"| {i} | {case.area} | {case.what} | `{_show(cmd, tmp)}` | {res['rc']} | {_show(msg, tmp)} |")
    return "\n".join(head + rows) + "\n"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    base = tmp_path_factory.mktemp("reliability")
    out = []
    only = set(filter(None, os.environ.get("T2VU_RELIABILITY_ONLY", "").split(",")))  # while writing cases
    for i, case in enumerate(CASES):
        if only and case.id not in only:
            continue
        tmp = base / f"c{i:02d}"
        out.append((case, run_case(case, tmp), tmp))
    return out


def test_at_least_150_cases_with_unique_ids():
    assert len(CASES) >= 150  # issue 26's target
    assert len({c.id for c in CASES}) == len(CASES)


def test_every_case_fails_cleanly(results):
    problems = []
    for case, res, tmp in results:
        why = []
        if res["rc"] != case.rc:
            why.append(f"exit {res['rc']} (want {case.rc})")
        if "Traceback" in res["stderr"]:
            why.append("traceback")
        if len(res["starts"]) != 1:
            why.append(f"{len(res['starts'])} error: lines")
        elif any(not line.startswith("  ") for line in res["message"][1:]):
            why.append("text after the error line that is not a listed problem")
        text = " ".join(res["message"])
        if case.expect.lower() not in text.lower():
            why.append(f"message lacks {case.expect!r}")
        if case.output and Path(_fill(case.output, tmp)).exists():
            why.append(f"left {case.output} behind")
        if res["temps"]:
            why.append(f"left temporary files {res['temps'][:3]}")
        if why:
            problems.append(f"{case.id}: {', '.join(why)} :: {res['stderr'][-400:]!r}")
    assert not problems, "\n".join(problems)


def test_reliability_doc_is_current(results):
    if os.environ.get("T2VU_RELIABILITY_ONLY"):
        pytest.skip("a subset of the cases ran (T2VU_RELIABILITY_ONLY)")
    text = render(results)
    if os.environ.get("T2VU_WRITE_DOCS") == "1":
        DOC.write_text(text)
    assert DOC.is_file() and DOC.read_text() == text, (
        "docs/reliability.md is stale: run `T2VU_WRITE_DOCS=1 pytest tests/test_reliability.py`"
    )
