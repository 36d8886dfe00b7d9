"""The cluster image can run its commands: the file tree the Dockerfile's own COPY lines build, installed the
way its RUN line installs it (`pip install <dir>`, not editable), runs `t2vu` from the image's WORKDIR.

No Docker daemon: the Dockerfile is parsed (WORKDIR, ENV, COPY, the project's `pip install`), the tree is
rebuilt in a temporary folder, the package is installed offline into a target folder
(`pip install --no-deps --no-build-isolation --no-index --target`; the base image's dependencies are this
Python's), and every command runs with PYTHONPATH = that target only and a cwd outside the repository, so
the checkout's sources cannot stand in for what the image lacks (each test asserts where `pipelines` came
from). Before issue 22 the image had no `toyworld` (every `t2vu` command died importing it), no
`benchmarks/` and an editable install of a source tree.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# pip options that take a value (the value is not a thing to install)
PIP_VALUE_OPTIONS = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url", "--extra-index-url",
                     "-t", "--target", "-f", "--find-links", "--prefix", "--root", "--src", "-C", "--config-settings"}
HEREDOC = re.compile(r"<<-?\s*['\"]?(\w+)['\"]?")


@dataclass
class Image:
    """What the tests need from a Dockerfile."""

    workdir: str = "/"
    env: dict[str, str] = field(default_factory=dict)
    copies: list[tuple[list[str], str]] = field(default_factory=list)  # (sources in the context, destination)
    installs: list[tuple[str, bool]] = field(default_factory=list)  # (local path pip installs, editable?)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and heredoc bodies dropped."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        while line.endswith("\\") and i < len(lines):
            nxt = lines[i].strip()
            i += 1
            if not nxt.startswith("#"):
                line = line[:-1].rstrip() + " " + nxt
        for tag in HEREDOC.findall(line):  # the body ends at a line holding only the tag
            while i < len(lines) and lines[i].strip() != tag:
                i += 1
            i += 1
        word, _, args = line.partition(" ")
        out.append((word.upper(), args.strip()))
    return out


def parse_dockerfile(text: str) -> Image:
    img = Image()
    for word, args in instructions(text):
        if word == "WORKDIR":
            img.workdir = args if args.startswith("/") else f"{img.workdir.rstrip('/')}/{args}"
        elif word == "ENV":
            parts = shlex.split(args)
            if len(parts) == 2 and "=" not in parts[0]:  # legacy `ENV KEY value`
                img.env[parts[0]] = parts[1]
            else:
                img.env.update(p.split("=", 1) for p in parts)
        elif word in ("COPY", "ADD"):
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            assert "--from" not in args, "a multi-stage COPY: teach this parser the stages"
            dest = parts[-1]
            if not dest.startswith("/"):
                dest = f"{img.workdir.rstrip('/')}/{dest.removeprefix('./')}"
                dest += "/" if parts[-1].endswith("/") else ""
            img.copies.append((parts[:-1], dest))
        elif word == "RUN":
            for cmd in re.split(r"&&|;|\|\|", HEREDOC.sub("", args)):
                tokens = shlex.split(cmd)
                if "pip" not in tokens or "install" not in tokens[tokens.index("pip"):]:
                    continue
                rest = tokens[tokens.index("install", tokens.index("pip")) + 1:]
                editable, skip = False, False
                for tok in rest:
                    if skip:
                        skip = False
                    elif tok in ("-e", "--editable"):
                        editable = True
                    elif tok in PIP_VALUE_OPTIONS:
                        skip = True
                    elif tok.startswith("-"):
                        continue
                    elif tok.startswith(("/", ".")):
                        path = tok if tok.startswith("/") else f"{img.workdir.rstrip('/')}/{tok}"
                        img.installs.append((path, editable))
                        editable = False
    return img


def inside(tree: Path, image_path: str) -> Path:
    """Where an absolute path of the image lies in the rebuilt tree."""
    return tree / os.path.normpath(image_path).lstrip("/")


def rebuild_tree(img: Image, context: Path, tree: Path) -> None:
    """The image's files, as Docker's COPY places them (a folder's contents go into the destination)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for sources, dest in img.copies:
        into_dir = dest.endswith("/") or len(sources) > 1
        for src in sources:
            s = context / src
            assert s.exists(), f"COPY {src}: not in the build context"
            if s.is_dir():
                shutil.copytree(s, inside(tree, dest), ignore=ignore, dirs_exist_ok=True)
            else:
                target = inside(tree, dest) / s.name if into_dir else inside(tree, dest)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(s, target)


# Loaded by every Python the tests start (sitecustomize on PYTHONPATH, Ray workers included): the project's
# top-level packages import from the image's install only. This Python may have the checkout installed
# (editable: a finder pointing into the checkout; or a copy in site-packages), and a package the image
# lacks would otherwise be found there.
ONLY_THE_IMAGE = """
import importlib.machinery, os, sys

_SITE = os.environ.get("T2VU_IMAGE_SITE")
_NAMES = set(filter(None, os.environ.get("T2VU_IMAGE_BLOCK", "").split(",")))


class OnlyTheImage:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if "." in name or name not in _NAMES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, [_SITE])
        if spec is None:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the image's install)", name=name)
        return spec


if _SITE:
    sys.meta_path.insert(0, OnlyTheImage)
"""


def checkout_packages() -> list[str]:
    """The checkout's top-level Python packages (what an install of the project can provide)."""
    return sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file())


@dataclass
class Installed:
    tree: Path
    target: Path  # what `pip install` put in site-packages in the image
    workdir: Path  # the image's WORKDIR in the tree: the commands' cwd
    env: dict[str, str]
    install_s: float

    def run(self, argv: list[str], timeout: float = 300, **env) -> subprocess.CompletedProcess:
        return subprocess.run(argv, cwd=self.workdir, env={**self.env, **env}, capture_output=True, text=True,
                              timeout=timeout)


def install_image_tree(dockerfile: str, context: Path, tmp: Path) -> Installed:
    """Rebuild the tree of `dockerfile` (its text) from `context` under `tmp` and install its package."""
    img = parse_dockerfile(dockerfile)
    project = [(p, e) for p, e in img.installs]
    assert project, "the Dockerfile installs no local folder with pip"
    assert not any(e for _, e in project), f"an editable install of a source tree: {project}"
    tree = tmp / "image"
    rebuild_tree(img, context, tree)
    target = tmp / "site-packages"
    t0 = time.perf_counter()
    for path, _ in project:
        src = inside(tree, path)
        assert (src / "pyproject.toml").is_file(), f"pip install {path}: no pyproject.toml there in the image"
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                            "--no-index", "--no-compile", "--disable-pip-version-check", "--quiet",
                            "--target", str(target), str(src)],
                           cwd=tmp, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        if f"rm -rf {path}" in dockerfile:  # the image removes its build copy: so do we
            shutil.rmtree(src)
    install_s = time.perf_counter() - t0
    shim = tmp / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(ONLY_THE_IMAGE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env |= {**img.env, "PYTHONPATH": os.pathsep.join([str(shim), str(target)]), "PYTHONNOUSERSITE": "1",
            "PYTHON": sys.executable, "PATH": f"{target / 'bin'}{os.pathsep}{env.get('PATH', '')}",
            "T2VU_IMAGE_SITE": str(target), "T2VU_IMAGE_BLOCK": ",".join(checkout_packages())}
    for key in ("T2VU_HOME",):  # image paths in ENV point into the tree here
        if key in env and env[key].startswith("/"):
            env[key] = str(inside(tree, env[key]))
    return Installed(tree, target, inside(tree, img.workdir), env, install_s)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Installed:
    return install_image_tree((ROOT / "Dockerfile").read_text(), ROOT, tmp_path_factory.mktemp("image-tree"))


def test_parser_reads_copy_workdir_and_heredoc_runs():
    img = parse_dockerfile(
        "FROM x\nWORKDIR /w\nCOPY --chown=a:b a.toml b.md /src/\nCOPY pkg ./pkg\n"
        "RUN pip install --index-url https://u \"torch==1\" && \\\n    pip install -c /dev/stdin /src <<'P' && rm -rf /src\n"
        "torch==1\nP\nENV K=v T2VU_HOME=/w\nRUN pip install -e .\n")
    assert img.workdir == "/w" and img.env == {"K": "v", "T2VU_HOME": "/w"}
    assert img.copies == [(["a.toml", "b.md"], "/src/"), (["pkg"], "/w/pkg")]
    assert img.installs == [("/src", False), ("/w/.", True)]


def test_image_tree_runs_t2vu(image):
    """`t2vu --help`, `t2vu plan` (the RayJob's config, relative to the WORKDIR) and the DeepSpeed config the
    code reads by itself, all from the installed package; the install stays fast and offline."""
    assert image.install_s < 90, f"installing the image's package took {image.install_s:.0f} s"
    assert not (image.workdir / "pipelines").exists()  # no source tree next to the commands
    where = image.run([sys.executable, "-c", "import eval, pipelines, toyworld, unlearn; "
                       "print(pipelines.__file__, toyworld.__file__, eval.__file__, unlearn.__file__)"])
    assert where.returncode == 0, where.stderr[-3000:]
    for f in where.stdout.split():
        assert Path(f).resolve().is_relative_to(image.target.resolve()), f"{f} is not the installed package"
    assert not image.workdir.resolve().is_relative_to(ROOT)  # the commands' cwd is not the checkout

    help_ = image.run(["t2vu", "--help"], timeout=120)
    assert help_.returncode == 0, help_.stderr[-3000:]
    for command in ("train", "eval", "tune", "run", "plan", "toy", "submit"):
        assert command in help_.stdout
    # the KubeRay RayJob's entrypoint form
    mod = image.run([sys.executable, "-m", "pipelines.cli.entry", "--help"], timeout=120)
    assert mod.returncode == 0, mod.stderr[-3000:]

    plan = image.run(["t2vu", "plan", "--config", "configs/cogvideox-2b-nudity.yaml", "--gpu-memory", "80"],
                     timeout=180)
    assert plan.returncode in (0, 3), plan.stderr[-3000:]
    out = json.loads(plan.stdout.strip().splitlines()[-1])
    assert out["peak_gb_per_gpu"] > 0

    # read by the code itself, not named in any config: $T2VU_HOME/configs/deepspeed (pipelines.runtime.paths)
    ds = image.run([sys.executable, "-c",
                    "from pipelines.config.pipeline import load_pipeline_config;"
                    "from pipelines.config.distributed import deepspeed_config;"
                    "from pipelines.runtime.paths import config_path;"
                    "cfg = load_pipeline_config('configs/cogvideox-2b-nudity.yaml');"
                    "print(deepspeed_config(cfg)['zero_optimization']['stage'], config_path('deepspeed'))"])
    assert ds.returncode == 0, ds.stderr[-3000:]
    stage, folder = ds.stdout.split()
    assert stage == "2" and Path(folder).resolve().is_relative_to(image.tree.resolve())

    # the toy world's models are package data (unlearn/assets), installed with the package
    toy = image.run([sys.executable, "-c", "from toyworld import TOY_MODEL_DIR; print(TOY_MODEL_DIR)"])
    assert toy.returncode == 0, toy.stderr[-3000:]
    toy_dir = Path(toy.stdout.strip())
    assert toy_dir.resolve().is_relative_to(image.target.resolve()) and (toy_dir / "model_index.json").is_file()


@pytest.mark.slow
def test_image_tree_runs_the_gpu_smoke_rehearsal(image, tmp_path):
    """benchmarks/gpu_smoke.sh's CPU rehearsal from the image's WORKDIR, its Wan case (Wan2.1-T2V-1.3B shape on a
    GPU): build -> plan -> `t2vu train` -> `t2vu eval` on the tiny Wan through the installed package. The distributed
    and search stages are left out here (they add minutes); tests/test_gpu_smoke_script.py runs the full CogVideoX
    sequence from the checkout. (One rehearsal for both the image and the Wan case: each costs ~30 CPU-s.)"""
    r = image.run(["bash", "benchmarks/gpu_smoke.sh", "--preset", "tiny-wan", "--device", "cpu", "--steps", "2",
                   "--eval-steps", "2", "--distributed", "off", "--no-search", "--workdir", str(tmp_path)],
                  timeout=600, DS_ACCELERATOR="cpu")
    assert r.returncode == 0, r.stderr[-4000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["ok"] is True and out["family"] == "wan" and out["text_tokens"] == 16
    assert out["train"]["finite"] and out["train"]["plan_fits"] is True and out["eval"]["videos"] == 4
    assert "skipped" in out["distributed"] and "skipped" in out["search"]
    cfg = (tmp_path / "train" / "config.yaml").read_text()
    assert "family: wan" in cfg and "xt_source: trajectory" in cfg
    assert json.loads((tmp_path / "train" / "eraser" / "eraser_config.json").read_text())["model_family"] == "wan"
    # every stage imported the installed package (the workdir's logs name no checkout path)
    for log in (tmp_path / "logs").glob("*.log"):
        assert str(ROOT / "pipelines") not in log.read_text(), log
