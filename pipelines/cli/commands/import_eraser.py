"""`t2vu import-eraser --format t2vunlearning FILE OUT`: another tool's trained eraser in this project's format.

    t2vu import-eraser --format t2vunlearning ckpt/eraser_weights.pt runs/paper-eraser --model /models/CogVideoX-2b
    t2vu eval --config configs/eval/cogvideox-2b-nudity.yaml --set eraser=runs/paper-eraser

The conversion (what is read, what is refused, why it is exact) is `unlearn.eraser_import`.
"""

from __future__ import annotations

import json

from pipelines.cli.commands.common import Writes

FORMATS = ("t2vunlearning",)  # unlearn.eraser_import.FORMATS (not imported here: keeps `t2vu --help` fast)


def register(sub) -> None:
    p = sub.add_parser("import-eraser", help="convert a trained eraser of another tool (T2VUnlearning) to this format")
    p.add_argument("--format", required=True, choices=FORMATS, help="the file's format")
    p.add_argument("file", help="the eraser file (T2VUnlearning: eraser_weights.pt; its eraser_config.json is read "
                                "from the same folder when present)")
    p.add_argument("out", help="the eraser directory to write (eraser.safetensors + eraser_config.json)")
    p.add_argument("--model", default=None, help="the model directory (or builtin:tiny) the eraser is for: checks the "
                                                  "hidden size and takes the block count from it")
    p.add_argument("--concept", default="", help="the erased concept, recorded in the eraser's metadata")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the eraser an earlier import-eraser wrote to OUT (only its files; OUT holding "
                        "anything else is refused)")
    p.set_defaults(func=run, writes=Writes("import-eraser", dest="out", flag="OUT", tool_outputs=True))


def run(args) -> int:
    from pathlib import Path

    from pipelines.runtime.run_folder import replace_outputs
    from unlearn.config import ConfigError
    from unlearn.eraser_import import import_eraser

    out = Path(args.out)  # held by the CLI for this command (run_folder.claim): a folder, ours, one writer
    model_dir = None
    if args.model:
        from unlearn.models.families import check_any_model_dir
        from unlearn.models.registry import resolve_model_path

        try:
            model_dir = check_any_model_dir(resolve_model_path(args.model))[1]
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(f"--model: {exc}") from None
    # The input (and the eraser_config.json read next to it) may not lie inside OUT, whose old files
    # --overwrite deletes and whose eraser_config.json this writes.
    with replace_outputs(out, "import-eraser", overwrite=args.overwrite, inputs=(args.file,)) as new:
        _, eraser_set = import_eraser(args.format, args.file, new, model_dir=model_dir, target_concept=args.concept)
    path = out
    m = eraser_set.meta
    print(json.dumps({"eraser": str(path), "format": args.format, "model_family": m.model_family,
                      "blocks": len(m.block_indices), "num_blocks": m.num_blocks, "rank": m.rank,
                      "hidden_size": m.hidden_size, "parameters": eraser_set.num_parameters()}))
    return 0
