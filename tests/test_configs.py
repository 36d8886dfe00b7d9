"""Every shipped config parses with the schema its folder declares (LitGPT-style)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*") if p.is_file())


def schema_for(path: Path):
    rel = path.relative_to(ROOT / "configs")
    top = rel.parts[0] if len(rel.parts) > 1 else ""
    if path.suffix == ".csv":  # prompt files referenced by concept.prompts_file
        from unlearn.data import read_prompt_csv

        return lambda p: read_prompt_csv(p, ["prompt"])
    if top == "eval":
        from eval.config import load_eval_config

        return load_eval_config
    if top == "attack":
        from pipelines.config.attack import load_attack_config, load_harness_eval_config

        return lambda p: load_harness_eval_config(load_attack_config(p))
    if top in ("", "search", "toy", "wan"):
        from pipelines.config.pipeline import load_pipeline_config

        return load_pipeline_config
    if top == "gates":  # a defence's gate section (unlearn/gates.py), read by benchmarks/defence_gate.py
        from unlearn.gates import GateConfig

        return lambda p: GateConfig(**yaml.safe_load(Path(p).read_text())["gate"])
    if top == "banks":  # a training config's bank section (unlearn/bank_config.py), set by benchmarks/defence_bank.py
        from pipelines.train.bank import bank_section
        from unlearn.bank_config import BankConfig

        return lambda p: BankConfig(**bank_section(p))
    if top == "deepspeed":
        return lambda p: json.loads(Path(p).read_text())
    if top == "cluster":
        return lambda p: list(yaml.safe_load_all(Path(p).read_text()))
    raise AssertionError(f"{rel}: no schema declared for configs/{top}/ — add one to tests/test_configs.py")


def test_there_are_configs():
    names = {p.relative_to(ROOT / "configs").as_posix() for p in CONFIGS}
    assert {"tiny.yaml", "deepspeed/zero2.json", "deepspeed/zero3.json"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.relative_to(ROOT / "configs").as_posix() for p in CONFIGS])
def test_config_parses(path):
    cfg = schema_for(path)(path)
    if path.suffix == ".csv":  # a prompt file: rows, each with a prompt
        assert cfg and all(str(r["prompt"]).strip() for r in cfg), f"{path.name}: an empty prompt file or row"
        return
    if path.suffix == ".json":  # DeepSpeed: the ZeRO stage its name says (distributed.zero_stage picks the file)
        assert cfg["zero_optimization"]["stage"] == int(path.stem.removeprefix("zero")), path.name
        return
    if path.parent.name == "cluster":
        assert cfg and all(isinstance(doc, dict) and doc for doc in cfg)  # the auth check: below
        return
    if path.parent.name == "attack":  # schema_for checks the harness eval it derives; this checks the file itself
        from pipelines.config.attack import load_attack_config

        cfg = load_attack_config(path)
    # Every value the file sets survives parsing: nothing dropped, renamed or defaulted over.
    data = yaml.safe_load(path.read_text()) or {}
    if path.parent.name in ("gates", "banks"):
        data = data[path.parent.name[:-1]]
    wrong = _not_kept(data, cfg.model_dump())
    assert not wrong, f"{path.name}: values lost in parsing: {wrong}"


#: The public architectures a real-model config names, and the model family each runs on.
ARCHITECTURES = {"cogvideox-2b": "cogvideox", "cogvideox-5b": "cogvideox", "wan2.1-t2v-1.3b": "wan",
                 "wan2.1-t2v-14b": "wan", "wan2.2-ti2v-5b": "wan", "wan2.2-t2v-a14b": "wan"}
PIPELINE = [p for p in CONFIGS if p.suffix == ".yaml" and
            (p.relative_to(ROOT / "configs").parts[:-1] or ("",))[0] in ("", "search", "toy", "wan")]


def _arch_in_name(path: Path) -> str | None:
    found = [a for a in ARCHITECTURES if path.stem.lower().startswith(a)]
    return max(found, key=len) if found else None


@pytest.mark.parametrize("path", PIPELINE, ids=[p.relative_to(ROOT / "configs").as_posix() for p in PIPELINE])
def test_pipeline_configs_resolve_the_model_they_are_named_for(path):
    """What a config resolves to, not only that it loads: the model family (registered), the architecture its
    file is named for, bf16 on GPU configs and fp32 on the CPU models, an existing DeepSpeed file, the
    trainer's view (`method()`) of the same model, and a search objective a classifier of its eval reports."""
    from pipelines.config.pipeline import load_pipeline_config
    from unlearn.models.families import base_family, family_names

    cfg = load_pipeline_config(path)
    m = cfg.model
    assert m.family in family_names()
    assert cfg.method().model == m  # the trainer sees exactly this model
    arch = _arch_in_name(path)
    if m.path.startswith("builtin:"):  # project-built CPU models: fp32, no GPU, family from the model's name
        assert m.dtype == "float32" and not cfg.distributed.use_gpu and arch is None
        assert base_family(m.family) == ("wan" if "wan" in m.path else "cogvideox"), m.path
    else:  # a real model: named for its architecture, which `t2vu plan` reads before the download
        assert arch is not None and m.architecture == arch and base_family(m.family) == ARCHITECTURES[arch]
        assert m.dtype == "bfloat16" and cfg.distributed.use_gpu and m.path.startswith("/path/to/")
    assert (ROOT / "configs" / "deepspeed" / f"zero{cfg.distributed.zero_stage}.json").is_file()
    if cfg.search is not None:
        from pipelines.search.objective import resolve_eval_config

        s = cfg.search
        names = s.metric_names()
        assert names and len(set(names)) == len(names) and s.objective.scalarize.name not in names
        assert {o.mode for o in s.objective.metrics} <= {"min", "max"}
        ecfg = resolve_eval_config(cfg, path.parent)
        # the objective reads summary keys of its eval's classifier: nudity_* from NudeNet, target_* from the toy one
        prefix = {"nudenet": "nudity_", "toy": "target_"}[ecfg.classifier.name]
        assert any(n.startswith(prefix) for n in names), (ecfg.classifier.name, names)


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "eval").glob("*.yaml")), ids=lambda p: p.name)
def test_eval_configs_pick_the_dtype_and_classifier_their_model_needs(path):
    from eval.config import load_eval_config

    ecfg = load_eval_config(path)
    builtin = ecfg.model.path.startswith("builtin:")
    assert ecfg.model.dtype == ("float32" if builtin else "bfloat16"), ecfg.model
    # the toy world's models are judged by the toy classifier; every other model by NudeNet (the nudity configs)
    assert ecfg.classifier.name == ("toy" if "toy" in ecfg.model.path else "nudenet"), ecfg.model.path
    assert builtin or _arch_in_name(path) is not None  # a real model's eval config is named for it


def _not_kept(given, parsed, at="") -> list[str]:
    """Where `parsed` does not hold what the YAML gave (lists and mappings may gain defaults; a bare
    name may become {name: ...}, as method and metric shorthands do; numbers compare as numbers)."""
    if isinstance(given, dict):
        if not isinstance(parsed, dict):
            return [at or "/"]
        return [w for k, v in given.items()
                for w in (_not_kept(v, parsed[k], f"{at}.{k}") if k in parsed else [f"{at}.{k} (missing)"])]
    if isinstance(given, list):
        if not isinstance(parsed, (list, tuple)) or len(parsed) != len(given):
            return [at]
        return [w for i, (g, q) in enumerate(zip(given, parsed)) for w in _not_kept(g, q, f"{at}[{i}]")]
    if isinstance(given, str) and isinstance(parsed, dict):
        return [] if parsed.get("name") == given else [at]
    if isinstance(given, (int, float)) and not isinstance(given, bool) and isinstance(parsed, (int, float)):
        return [] if float(given) == float(parsed) else [at]
    return [] if given == parsed or str(given) == str(parsed) else [f"{at} ({given!r} -> {parsed!r})"]


def test_model_paths_resolve_or_are_placeholders():
    """Configs either use built-in models or say clearly that the path is a placeholder."""
    for path in CONFIGS:
        if path.suffix not in (".yaml", ".yml"):
            continue
        text = path.read_text()
        for line in text.splitlines():
            s = line.strip()
            if s.startswith("path:") and "builtin:" not in s and "/path/to/" not in s and "${" not in s:
                val = s.split(":", 1)[1].split("#", 1)[0].strip().strip("'\"")
                if val and val != "null" and not val.startswith("#"):
                    assert "/mnt/" in val or (ROOT / val).exists() or (path.parent / val).exists(), f"{path}: {s}"


def test_toy_configs_speak_the_toy_worlds_language():
    """Prompts in configs on the toy model must be prompts the toy world (and its model) knows."""
    from toyworld import world

    checked = 0
    for path in CONFIGS:
        if path.suffix != ".yaml":
            continue
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict) or (data.get("model") or {}).get("path") != "builtin:toy":
            continue
        concept = data.get("concept") or {}
        for p in list(concept.get("prompts", [])) + [q for q in concept.get("preserve", []) if q]:
            world.parse_prompt(p)  # raises on unknown words / shapes
            checked += 1
    assert checked >= 10, f"only {checked} toy prompts found in configs: the check would pass on nothing"


def test_referenced_eval_configs_exist():
    """search.objective.eval paths are relative to the config file; a wrong one must fail here, not mid-run."""
    for path in CONFIGS:
        if path.suffix != ".yaml":
            continue
        data = yaml.safe_load(path.read_text()) or {}
        ref = ((data.get("search") or {}).get("objective") or {}).get("eval") if isinstance(data, dict) else None
        if isinstance(ref, str):
            assert (path.parent / ref).is_file(), f"{path}: search.objective.eval {ref!r} does not exist"


@pytest.mark.parametrize("record", ["search_config.yaml", "variant.json"])
def test_an_output_folder_refuses_another_config(tmp_path, record):
    from pipelines.config.pipeline import load_pipeline_config
    from pipelines.runtime.run_folder import pin_config
    from unlearn.config import ConfigError

    cfg = load_pipeline_config(ROOT / "configs" / "tiny.yaml")
    pin = tmp_path / record
    pin_config(pin, cfg.to_dict(), tmp_path)
    pin_config(pin, load_pipeline_config(ROOT / "configs" / "tiny.yaml").to_dict(), tmp_path)  # same: fine
    before = pin.read_text()
    assert (json.loads(before) if record.endswith(".json") else yaml.safe_load(before)) == json.loads(
        json.dumps(cfg.to_dict()))
    other = load_pipeline_config(ROOT / "configs" / "tiny.yaml", ["loss.eta=5.5", "eraser.rank=2"])
    with pytest.raises(ConfigError, match=r"changed: eraser\.rank, loss\.eta.*new --output"):
        pin_config(pin, other.to_dict(), tmp_path)
    assert pin.read_text() == before  # the record is not overwritten by the refused config


def test_cluster_manifests_state_token_auth_explicitly():
    """Never rely on Ray's default auth mode: every node of every shipped cluster starts with RAY_AUTH_MODE=token."""
    kube = yaml.safe_load((ROOT / "configs" / "cluster" / "kuberay-rayjob.yaml").read_text())
    spec = kube["spec"]["rayClusterSpec"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for g in groups:
        env = {e["name"]: e for e in g["template"]["spec"]["containers"][0]["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token" and "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]
    aws = yaml.safe_load((ROOT / "configs" / "cluster" / "ray-up-aws.yaml").read_text())
    starts = [c for c in aws["head_start_ray_commands"] + aws["worker_start_ray_commands"] if "ray start" in c]
    assert starts and all("RAY_AUTH_MODE=token" in c for c in starts)


def test_the_kept_check_catches_a_dropped_or_changed_value():
    """Not vacuous: a value the schema changed, a key it dropped, a list it shortened are all reported."""
    parsed = {"loss": {"eta": 3.0, "w": 1}, "names": [{"name": "a", "x": 1}], "s": "x"}
    assert _not_kept({"loss": {"eta": 3, "w": 1}, "names": ["a"], "s": "x"}, parsed) == []
    assert _not_kept({"loss": {"eta": 7}}, parsed) == [".loss.eta"]
    assert _not_kept({"loss": {"gone": 1}}, parsed) == [".loss.gone (missing)"]
    assert _not_kept({"names": ["a", "b"]}, parsed) == [".names"]
    assert _not_kept({"s": "y"}, parsed) == [".s ('y' -> 'x')"]
