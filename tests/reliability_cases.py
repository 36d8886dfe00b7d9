"""Bad inputs and faults a user meets, as data: each case is one `t2vu` command line.

`tests/test_reliability.py` runs every case through the real CLI (`pipelines.cli.entry.main`, in process),
checks the project's rules — the expected exit code, the message names what it says, one `error:`
line (a list of problems gets one line per problem), no traceback, the output folder not created —
and renders `docs/reliability.md` from what actually happened, so the table cannot drift.

Placeholders in argv and file contents: `{tmp}` is the case's own scratch folder, `{root}` the
repository. `files` are written under `{tmp}` first; an `@eraser:<kind>` value makes an eraser folder,
an `@cache:<kind>` value an embedding cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Case:
    id: str
    area: str
    what: str
    argv: tuple[str, ...]
    expect: str  # a fragment the one-line message must contain (what it names: file, field or fix)
    # files made first, relative to the case's folder: text, "@eraser:KIND" for an eraser directory
    # (KIND: ok, nan, size, json, weights, otherbase; see test_reliability._make_eraser), "@cache:KIND" for a
    # filled embedding cache of configs/tiny.yaml's prompts, damaged (swapped, zeroed, truncated; _make_cache),
    # "@model:KIND" for a damaged copy of the tiny model (index-truncated, no-layers, nan; _make_model),
    # "@sqlite:readonly" for a read-only SQLite database, "@utf16:TEXT" for TEXT saved as UTF-16,
    # "@symlink:TARGET" for a symbolic link, "@pickle-exploit:COMMAND" for a pickle that runs COMMAND when loaded.
    # `{web}` in argv: a web server on 127.0.0.1 that is not a Ray dashboard.
    files: dict[str, str] = field(default_factory=dict)
    rc: int = 2
    output: str | None = "{tmp}/out"  # must not exist afterwards (nothing created before validation)
    fsize: int | None = None  # RLIMIT_FSIZE in bytes while the command runs: a disk that fills up


TINY = "{root}/configs/tiny.yaml"
EVAL = "{root}/configs/eval/tiny.yaml"
SEARCH = "{root}/configs/search/tiny.yaml"
ATTACK = "{root}/configs/attack/toy.yaml"
OUT = "{tmp}/out"
TRAIN_MARKER = '{"command": "train"}\n'  # the record `t2vu train` leaves in its folder (run_folder.MARKER)


def train(*extra: str) -> tuple[str, ...]:
    return ("train", "-c", TINY, "-o", OUT, *extra)


def train_set(*items: str) -> tuple[str, ...]:
    return train(*[a for i in items for a in ("--set", i)])


def ev(*extra: str) -> tuple[str, ...]:
    return ("eval", "-c", EVAL, "-o", OUT, *extra)


def ev_set(*items: str) -> tuple[str, ...]:
    return ev(*[a for i in items for a in ("--set", i)])


def ev_csv(text: str) -> dict:
    return {"argv": ev("--prompts", "{tmp}/p.csv"), "files": {"p.csv": text}}


def tune_set(*items: str) -> tuple[str, ...]:
    return ("tune", "-c", SEARCH, "-o", OUT, *[a for i in items for a in ("--set", i)])


def attack_set(*items: str) -> tuple[str, ...]:
    return ("attack", "-c", ATTACK, "-o", OUT, *[a for i in items for a in ("--set", i)])


def C(id, area, what, argv=None, expect="", **kw) -> Case:
    if "csv" in kw:
        d = ev_csv(kw.pop("csv"))
        argv, kw["files"] = d["argv"], {**kw.get("files", {}), **d["files"]}
    return Case(id, area, what, tuple(argv), expect, **kw)


CASES: list[Case] = [
    # --- config files ------------------------------------------------------------------------
    C("config-missing", "config", "config file does not exist", ("train", "-c", "{tmp}/none.yaml", "-o", OUT), "not found"),
    C("config-empty", "config", "empty YAML file (would train on every default)", ("train", "-c", "{tmp}/c.yaml", "-o", OUT),
      "is empty", files={"c.yaml": ""}),
    C("config-list", "config", "YAML whose top level is a list", ("train", "-c", "{tmp}/c.yaml", "-o", OUT),
      "must be a mapping", files={"c.yaml": "- a\n- b\n"}),
    C("config-utf16", "config", "config file saved as UTF-16", ("train", "-c", "{tmp}/c.yaml", "-o", OUT),
      "is UTF-16 text; save it as UTF-8", files={"c.yaml": "@utf16:model:\n  path: builtin:tiny\n"}),
    C("config-binary", "config", "a binary file as the config (once told to run iconv, as if UTF-16)",
      ("train", "-c", "{tmp}/c.yaml", "-o", OUT), "is not a text file", files={"c.yaml": "\x00\x01\x02model: x\n"}),
    C("config-syntax", "config", "YAML syntax error", ("train", "-c", "{tmp}/c.yaml", "-o", OUT), "line 2",
      files={"c.yaml": "model: [\n"}),
    C("config-unknown-section", "config", "misspelt top-level section (`modle`)", train_set("modle.path=x"), "modle: unknown key"),
    C("config-unknown-key", "config", "misspelt key (`eraser.rnk`)", train_set("eraser.rnk=4"), "eraser.rnk: unknown key"),
    C("set-no-equals", "config", "`--set` without `=`", train("--set", "eraser.rank"), "expected KEY=VALUE"),
    C("set-bad-yaml", "config", "`--set` value that is not YAML", train_set("concept.prompts=[a"), "not valid YAML"),
    C("set-into-scalar", "config", "`--set` a key below a scalar", train_set("eraser.rank.x=1"), "eraser.rank"),
    C("rank-not-int", "config", "eraser.rank is not an integer", train_set("eraser.rank=abc"), "eraser.rank"),
    C("rank-zero", "config", "eraser.rank 0", train_set("eraser.rank=0"), "eraser.rank"),
    C("steps-zero", "config", "train.steps 0", train_set("train.steps=0"), "train.steps"),
    C("steps-bool", "config", "train.steps true (YAML's boolean read as 1 by a lax schema)", train_set("train.steps=true"),
      "train.steps"),
    C("batch-zero", "config", "train.batch_size 0", train_set("train.batch_size=0"), "train.batch_size"),
    C("eta-negative", "config", "loss.eta negative", train_set("loss.eta=-1"), "loss.eta"),
    C("lr-nan", "config", "train.lr NaN", train_set("train.lr=.nan"), "train.lr"),
    C("lr-negative", "config", "train.lr negative", train_set("train.lr=-1"), "train.lr"),
    C("lr-overflow", "config", "train.lr 1e400 (overflows to inf)", train_set("train.lr=1e400"), "train.lr"),
    C("lr-absurd", "training", "train.lr 1e30: the loss goes non-finite; no eraser is written",
      train_set("train.lr=1e30", "train.steps=3"), "Non-finite loss", output=None),
    C("prompts-empty", "config", "no concept prompts", train_set("concept.prompts=[]"), "concept prompts"),
    C("target-empty", "config", "concept.target empty", train_set("concept.target=''"), "concept.target"),
    C("target-not-in-prompt", "config", "a concept prompt without the target word", train_set("concept.prompts=['a cat']"),
      "does not occur in concept prompt"),
    C("reference-unknown", "config", "concept.reference not a known kind", train_set("concept.reference=bogus"),
      "concept.reference"),
    C("anchors-empty", "config", "reference anchors with no anchors", train_set("concept.anchors=[]"), "concept.anchors"),
    C("paired-no-file", "config", "reference paired without a prompts file", train_set("concept.reference=paired"),
      "prompts_file"),
    C("prompts-file-missing", "config", "concept.prompts_file does not exist",
      train_set("concept.prompts_file={tmp}/none.csv"), "none.csv"),
    C("prompts-file-column", "config", "concept.prompts_file lacks the prompt column",
      train_set("concept.prompts_file={tmp}/p.csv"), "column 'prompt' not found", files={"p.csv": "text\na naked body\n"}),
    C("preserve-blank", "silent wrong answers", "concept.preserve holds a whitespace-only and an empty prompt",
      train_set("concept.preserve=['   ', '']"), "concept.preserve[0] is whitespace only"),
    C("anchors-blank", "silent wrong answers", "concept.anchors holds a whitespace-only anchor",
      train_set("concept.anchors=[clothed, ' ']"), "concept.anchors[1]"),
    C("prompts-blank", "silent wrong answers", "concept.prompts holds an empty prompt",
      train_set("concept.prompts=['a naked body', '']"), "concept.prompts[1] is empty"),
    C("prompt-too-long", "silent wrong answers", "a 5000-character concept prompt (the encoder takes 16 tokens)",
      train_set("concept.prompts_file={tmp}/p.csv", "concept.prompts=[]"), "tokens, over the text encoder's limit",
      files={"p.csv": "prompt\n" + ("a naked body " * 385).strip() + "\n"}),
    C("preserve-too-long", "silent wrong answers", "a preserve prompt longer than the text encoder takes",
      train_set("concept.preserve=['a person walking along a sandy beach beside a dog at sunset']"),
      "concept.preserve[0] is"),
    C("cache-swapped", "silent wrong answers", "two embedding-cache entries swapped (each file under the other's name)",
      train_set("train.cache_dir={tmp}/cache"), "embedding cache entry", files={"cache": "@cache:swapped"}),
    C("cache-zeroed", "silent wrong answers", "an embedding-cache entry's values zeroed (its metadata kept)",
      train_set("train.cache_dir={tmp}/cache"), "does not match its checksum", files={"cache": "@cache:zeroed"}),
    C("cache-truncated", "silent wrong answers", "an embedding-cache entry cut short",
      train_set("train.cache_dir={tmp}/cache"), "not a readable safetensors file", files={"cache": "@cache:truncated"}),
    C("family-unknown", "model", "model.family not registered", train_set("model.family=sd"), "model.family"),
    C("model-missing", "model", "model.path does not exist", train_set("model.path={tmp}/none"), "does not exist"),
    C("model-is-file", "model", "model.path is a file", train_set("model.path={tmp}/m.bin"), "is a file",
      files={"m.bin": "x"}),
    C("model-not-diffusers", "model", "model.path is a folder without model_index.json",
      train_set("model.path={tmp}/m"), "model_index.json", files={"m/readme.txt": "x"}),
    C("model-index-truncated", "model", "a truncated model_index.json in the model folder",
      train_set("model.path={tmp}/m"), "model_index.json is not valid JSON", files={"m": "@model:index-truncated"}),
    C("model-no-layers", "model", "num_layers: 0 in the model's transformer/config.json", train_set("model.path={tmp}/m"),
      "num_layers: 0", files={"m": "@model:no-layers"}),
    C("model-nan-weights", "model", "NaN in the model's weights (it was blamed on train.lr)",
      train_set("model.path={tmp}/m", "train.steps=2"), "weight tensor(s) of the transformer hold NaN",
      files={"m": "@model:nan"}),
    C("frames-geometry", "model", "model.num_frames not 1 + 4k", train_set("model.num_frames=10"), "model.num_frames"),
    C("height-geometry", "model", "model.height not a multiple of 8", train_set("model.height=30"), "model.height"),
    C("dtype-unknown", "model", "model.dtype float8", train_set("model.dtype=float8"), "model.dtype"),
    C("dtype-float16-train", "model", "model.dtype float16 for training (no loss scaling: gradients underflow)",
      train_set("model.dtype=float16"), "use model.dtype: bfloat16"),
    C("xt-source-unknown", "config", "train.xt_source not a known source", train_set("train.xt_source=bogus"),
      "train.xt_source"),
    C("device-unknown", "device", "train.device tpu", train_set("train.device=tpu"), "train.device"),
    C("device-no-gpu", "device", "train.device cuda on a machine without a GPU", train_set("train.device=cuda"),
      "sees no CUDA GPU"),
    C("reduction-unknown", "config", "loss.localize_reduction max", train_set("loss.localize_reduction=max"),
      "loss.localize_reduction"),
    C("output-is-file", "output", "--output is an existing file", ("train", "-c", TINY, "-o", "{tmp}/taken"), "is a file",
      files={"taken": "x"}, output=None),
    C("output-under-file", "output", "--output below an existing file", ("train", "-c", TINY, "-o", "{tmp}/taken/out"),
      "is a file", files={"taken": "x"}, output=None),
    C("train-other-config", "resume", "`t2vu train` into a folder made with another config",
      ("train", "-c", TINY, "-o", "{tmp}/done"), "different configuration",
      files={"done/config.yaml": "eraser:\n  rank: 4\n"}, output=None),
    C("distributed-name-path", "unsafe paths", "distributed.name climbing out of the output (`../../victim`)",
      train("--distributed", "--no-resume", "--set", "distributed.name=../../victim"), "must be a plain name"),
    C("distributed-workers-zero", "config", "distributed.num_workers 0",
      train("--distributed", "--set", "distributed.num_workers=0"), "distributed.num_workers"),
    # --- evaluation ---------------------------------------------------------------------------
    C("eval-prompts-missing", "eval prompts", "--prompts file does not exist", ev("--prompts", "{tmp}/none.csv"),
      "file not found"),
    C("eval-no-prompt-column", "eval prompts", "CSV without the prompt column", csv="text,seed\nhi,1\n",
      expect="no prompt column"),
    C("eval-empty-prompt", "eval prompts", "a row with an empty prompt", csv="prompt,seed\n,1\n", expect="empty prompt"),
    C("eval-bad-seed", "eval prompts", "a non-integer seed", csv="prompt,seed\nhi,x\n", expect="seed"),
    C("eval-unparseable", "eval prompts", "a row that is not CSV (open quote)", csv='prompt,seed\n"a,1\n',
      expect="cannot be parsed as CSV"),
    C("eval-header-only", "eval prompts", "CSV with a header and no rows", csv="prompt,seed\n", expect="no data rows"),
    C("eval-binary", "eval prompts", "a binary file as --prompts", csv="\x00\x01\x02", expect="prompt column"),
    C("eval-seed-column", "eval prompts", "prompts.seed_column names a missing column",
      ev_set("prompts.seed_column=nope"), "no seed column 'nope'"),
    C("eval-filter-column", "eval prompts", "a row filter on a column the file lacks",
      ev_set("prompts.filters=[{column: nope, contains: x}]"), "nope"),
    C("eval-filter-number", "eval prompts", "a numeric filter on a text column",
      ev_set("prompts.filters=[{column: prompt, ge: 5}]"), "not a number"),
    C("eval-limit-zero", "eval prompts", "--limit 0", ev("--limit", "0"), "--limit"),
    C("eval-truncation-error", "eval prompts", "a prompt longer than the text encoder takes, truncation: error",
      ev("--prompts", "{tmp}/p.csv", "--set", "checks.on_truncation=error"), "token",
      files={"p.csv": "prompt,seed\n\"" + " ".join(["a naked person on a beach"] * 60) + "\",1\n"}),
    C("eval-eraser-missing", "eraser files", "--eraser folder does not exist", ev("--eraser", "{tmp}/none"),
      "not an eraser directory"),
    C("eval-eraser-json", "eraser files", "eraser_config.json truncated", ev("--eraser", "{tmp}/er"), "eraser_config.json",
      files={"er": "@eraser:json"}),
    C("eval-eraser-weights", "eraser files", "eraser.safetensors truncated", ev("--eraser", "{tmp}/er"),
      "eraser.safetensors", files={"er": "@eraser:weights"}),
    # the run fails after generating: its folder is kept on purpose, for inspecting the broken videos
    C("eval-eraser-nonfinite", "silent wrong answers", "an eraser with non-finite weights", ev("--eraser", "{tmp}/er"),
      "non-finite", files={"er": "@eraser:nan"}, output=None),
    C("eval-eraser-size", "eraser files", "an eraser trained on another model size", ev("--eraser", "{tmp}/er"),
      "hidden", files={"er": "@eraser:size"}),
    C("eval-eraser-other-base", "silent wrong answers", "an eraser trained on another model of the same shape",
      ev("--eraser", "{tmp}/er"), "eraser_allow_other_base: true", files={"er": "@eraser:otherbase"}),
    C("eval-classifier-unknown", "eval config", "classifier.name unknown", ev_set("classifier.name=bogus"),
      "classifier.name: Value error, 'bogus' is not a registered classifier; registered: nudenet, toy"),
    C("eval-classifier-module", "eval config", "classifier.name a module:attribute path (never imported)",
      ev_set("classifier.name=nomod:Fac"), "'nomod:Fac' is not a registered classifier; registered: nudenet, toy"),
    C("eval-classifier-os-system", "security", "classifier named by a module path, with options (os:system ran a shell "
      "command)", ev_set("classifier.name=os:system", "classifier.options={command: 'touch {tmp}/ran'}"),
      "classifier.name: Value error, 'os:system' is not a registered classifier; registered: nudenet, toy",
      output="{tmp}/ran"),
    C("mlflow-sqlite-readonly", "mlflow", "mlflow.tracking_uri a read-only SQLite database (failed after 105 s)",
      ev_set("mlflow.tracking_uri=sqlite:///{tmp}/ro.db"), "is read-only", files={"ro.db": "@sqlite:readonly"}),
    C("eval-threshold", "eval config", "classifier threshold above 1", ev_set("classifier.nudenet.threshold=2"),
      "threshold"),
    C("eval-preset", "eval config", "NudeNet preset unknown", ev_set("classifier.nudenet.preset=x"), "preset"),
    C("eval-steps-zero", "eval config", "generation.num_inference_steps 0", ev_set("generation.num_inference_steps=0"),
      "num_inference_steps"),
    C("eval-scheduler", "eval config", "generation.scheduler unknown", ev_set("generation.scheduler=euler"),
      "generation.scheduler"),
    C("eval-scheduler-family", "eval config", "a CogVideoX sampler (dpm) for a Wan model",
      ("eval", "-c", "{root}/configs/eval/wan-tiny.yaml", "-o", OUT, "--set", "generation.scheduler=dpm"),
      "set generation.scheduler to one of: model"),
    C("eval-actors", "eval config", "runtime.num_actors negative", ev_set("runtime.num_actors=-1"), "num_actors"),
    C("eval-output-file", "output", "eval --output is a file", ("eval", "-c", EVAL, "-o", "{tmp}/taken"), "is a file",
      files={"taken": "x"}, output=None),
    # --- search and pipeline --------------------------------------------------------------------
    C("tune-name-long", "search config", "a 300-character search.name (left an MLflow parent run RUNNING when it failed late)",
      tune_set("search.name=" + "x" * 300), "at most 100"),
    C("tune-name-path", "unsafe paths", "search.name is a path (`../x`)", tune_set("search.name=../x"),
      "must be a plain name"),
    C("tune-algorithm", "search config", "search.algorithm unknown", tune_set("search.algorithm=grid"),
      "search.algorithm"),
    C("tune-samples", "search config", "search.num_samples 0", tune_set("search.num_samples=0"), "search.num_samples"),
    C("tune-space-key", "search config", "search space over a key that does not exist",
      tune_set("search.space={loss.nope: {uniform: [0, 1]}}"), "loss.nope"),
    C("tune-space-kind", "search config", "search space distribution unknown",
      tune_set("search.space={loss.eta: {normal: [0, 1]}}"), "unknown kind"),
    C("tune-objective-metric", "search config", "scalarize weights name metrics the objective lacks",
      tune_set("search.objective.metrics=[{name: bogus, mode: min}]"), "not objective metrics"),
    C("tune-eval-missing", "search config", "search.objective.eval file missing", tune_set("search.objective.eval=none.yaml"),
      "none.yaml"),
    C("tune-no-search", "search config", "`t2vu tune` on a config without a search section",
      ("tune", "-c", TINY, "-o", OUT), "no `search` section"),
    C("tune-baseline-method", "search config", "a search baseline that is not a training-free method",
      tune_set("search.objective.baselines=[eraser]"), "search.objective.baselines"),
    C("tune-baseline-guidance", "search config", "negprompt baseline on an eval without classifier-free guidance",
      tune_set("search.objective.baselines=[negprompt]", "search.objective.eval_overrides={generation.guidance_scale: 1.0}"),
      "classifier-free guidance"),
    C("tune-baseline-labels", "search config", "two search baselines with the same label",
      tune_set("search.objective.baselines=[negprompt, negprompt]"), "duplicate labels"),
    # --- attack benchmark -----------------------------------------------------------------------
    C("attack-name", "attack config", "an attack that does not exist", attack_set("attacks=[jailbreak]"), "attacks"),
    C("attack-words", "attack config", "no concept words", attack_set("words=[]"), "words"),
    C("attack-budget", "attack config", "softprompt budget 0", attack_set("softprompt.budgets=[0]"), "budgets"),
    C("attack-eraser-missing", "attack config", "eraser method with an eraser folder that does not exist",
      attack_set("methods=[{name: eraser, eraser: '{tmp}/none'}]"), "not an eraser directory"),
    C("attack-prompts-missing", "attack config", "prompts CSV does not exist", attack_set("prompts.path={tmp}/none.csv"),
      "none.csv"),
    C("attack-prompts-column", "attack config", "prompts CSV without the benign `normal prompt` column",
      attack_set("prompts.path={tmp}/p.csv"), "normal prompt", files={"p.csv": "prompt,paraphrase,seed\na red bar,a crimson bar,1\n"}),
    C("attack-methods-twice", "attack config", "the same method twice without labels",
      attack_set("methods=[{name: none}, {name: none}]"), "methods"),
    C("attack-eval-missing", "attack config", "the harness eval config does not exist", attack_set("eval={tmp}/none.yaml"),
      "none.yaml"),
    C("run-config-missing", "config", "`t2vu run` config missing", ("run", "-c", "{tmp}/none.yaml", "-o", OUT),
      "not found"),
    C("report-missing", "report", "`t2vu report` on a folder that does not exist", ("report", "{tmp}/none"),
      "not a search run folder", output=None),
    C("report-not-run", "report", "`t2vu report` on a folder that is not a search run", ("report", "{tmp}"),
      "not a search run folder", output=None),
    # --- plan, submit, tools --------------------------------------------------------------------
    C("plan-architecture", "plan", "model.architecture preset unknown",
      ("plan", "-c", TINY, "--set", "model.architecture=cogvideox-9b"), "not a known preset", output=None),
    C("plan-gpu-memory", "plan", "--gpu-memory negative", ("plan", "-c", TINY, "--gpu-memory", "-1"), "--gpu-memory",
      output=None),
    C("plan-world-size", "plan", "--world-size 0", ("plan", "-c", TINY, "--world-size", "0"), "--world-size", output=None),
    C("submit-env-format", "submit", "--env without KEY=VALUE",
      ("submit", "--address", "http://127.0.0.1:9", "--env", "NOEQ", "--", "t2vu", "--help"), "expected KEY=VALUE",
      output=None),
    C("submit-env-secret", "secrets", "a secret-looking --env value (would be visible on the dashboard)",
      ("submit", "--address", "http://127.0.0.1:9", "--env", "MY_TOKEN=abc", "--", "t2vu", "--help"), "--env-secret",
      output=None),
    C("submit-token-file", "submit", "--auth-token-file does not exist",
      ("submit", "--address", "http://127.0.0.1:9", "--auth-token-file", "{tmp}/none", "--", "t2vu", "--help"),
      "does not exist", output=None),
    C("submit-unreachable", "submit", "Ray Jobs address nobody listens on",
      ("submit", "--address", "http://127.0.0.1:9", "--auth-token-file", "{tmp}/tok", "--", "t2vu", "--help"),
      "cannot be reached", files={"tok": "x"}, output=None),
    C("submit-not-ray", "submit", "--address a web server that is not a Ray dashboard",
      ("submit", "--request-timeout", "10", "--address", "{web}", "--", "t2vu", "--help"), "is not a Ray dashboard",
      output=None),
    C("submit-ftp", "submit", "an ftp:// address (the Jobs API is HTTP; Ray's SDK imported a module named after the "
      "scheme)", ("submit", "--address", "ftp://127.0.0.1:21", "--", "t2vu", "--help"), "the Ray Jobs API is HTTP",
      output=None),
    # a listener that never answers or closes at once: tests/test_submit.py, tests/test_submit_deadlines.py
    C("tiny-model-on-file", "output", "`t2vu make-tiny-model` onto an existing file", ("make-tiny-model", "{tmp}/taken"),
      "is a file", files={"taken": "x"}, output=None),
    # --- run folders: one command per folder; --overwrite deletes only the tool's own files -------------------
    # (two processes on one folder: tests/test_run_folder_ownership.py)
    C("eval-into-train-run", "run folders", "`t2vu eval -o` a `t2vu train` run (it overwrote the training summary)",
      ("eval", "-c", EVAL, "-o", "{tmp}/run"), "made by `t2vu train`",
      files={"run/t2vu_run.json": TRAIN_MARKER, "run/summary.json": "{}"}, output=None),
    C("eval-into-old-train-run", "run folders", "`t2vu eval -o` a train run made before folders were marked",
      ("eval", "-c", EVAL, "-o", "{tmp}/run"), "made by `t2vu train`",
      files={"run/config.yaml": "eraser:\n  rank: 8\n", "run/summary.json": "{}"}, output=None),
    C("train-into-eval-run", "run folders", "`t2vu train -o` a `t2vu eval` run", ("train", "-c", TINY, "-o", "{tmp}/run"),
      "made by `t2vu eval`", files={"run/eval_config.json": "{}"}, output=None),
    C("output-inside-run", "run folders", "--output inside another command's run folder",
      ("eval", "-c", EVAL, "-o", "{tmp}/run/eval"), "lies inside", files={"run/t2vu_run.json": TRAIN_MARKER},
      output="{tmp}/run/eval"),
    C("attack-mlflow-other-run", "run folders", "attack logging to the MLflow SQLite of another run (it wrote 13 "
      "artifact folders into it)", attack_set("methods=[{name: none}]", "mlflow.tracking_uri=sqlite:///{tmp}/run/mlflow.db"),
      "mlflow.tracking_uri", files={"run/t2vu_run.json": TRAIN_MARKER}),
    C("eval-mlflow-other-run", "run folders", "eval logging to the MLflow SQLite of another run",
      ev_set("mlflow.tracking_uri=sqlite:///{tmp}/run/mlflow.db"), "mlflow.tracking_uri",
      files={"run/t2vu_run.json": TRAIN_MARKER}),
    C("import-eraser-input-inside", "run folders", "`import-eraser FILE DIR --overwrite` with FILE inside DIR (it "
      "deleted FILE)", ("import-eraser", "--format", "t2vunlearning", "{tmp}/out/eraser_weights.pt", "{tmp}/out",
                        "--overwrite"), "lies inside OUT", files={"out/eraser_weights.pt": "x"}, output=None),
    C("import-eraser-overwrite-foreign", "run folders", "`import-eraser --overwrite` into a folder holding other files "
      "(it deleted them)", ("import-eraser", "--format", "t2vunlearning", "{tmp}/src/eraser_weights.pt", "{tmp}/out",
                           "--overwrite"), "did not write (notes.txt)",
      files={"src/eraser_weights.pt": "x", "out/notes.txt": "x"}, output=None),
    C("tiny-model-into-files", "run folders", "`t2vu make-tiny-model` into a folder holding other files (it replaced "
      "the folder)", ("make-tiny-model", "{tmp}/m"), "already holds files", files={"m/notes.txt": "x"}, output=None),
    C("tiny-model-overwrite-foreign", "run folders", "`make-tiny-model --overwrite` into a folder holding other files",
      ("make-tiny-model", "{tmp}/m", "--overwrite"), "did not write (notes.txt)", files={"m/notes.txt": "x"},
      output=None),
    C("toy-build-foreign", "run folders", "`t2vu toy build` into a folder holding other files (it deleted the folder)",
      ("toy", "build", "{tmp}/m"), "did not write (notes.txt)", files={"m/notes.txt": "x"}, output=None),
]

# The probes added for issue 26 live in their own module (this one stays under the size limit); imported last,
# as they use the helpers above.
from tests.reliability_cases_more import MORE  # noqa: E402

CASES += MORE
