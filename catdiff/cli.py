"""Command line: ``catdiff run|list|prepare|sample|eval``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import parse_sets


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable), e.g. --set lr=1e-3")
    p.add_argument("--config", help="JSON or TOML file of config values")


def cmd_list(args) -> int:
    from .hooks import KINDS, registry

    reg = registry()
    for kind in KINDS:
        print(f"{kind}:")
        comps = reg.components[kind]
        if not comps:
            print("  (none)")
        for name in sorted(comps):
            c = comps[name]
            desc = ""
            if kind == "tasks":
                desc = getattr(c.factory, "description", "") or ""
            print(f"  {name:<24} from {c.source}" + (f"  - {desc}" if desc else ""))
    if reg.failed:
        print("plugins that failed to load:")
        for name, err in reg.failed.items():
            print(f"  {name}: {err}")
    return 0


def cmd_run(args) -> int:
    from .engine import Engine

    overrides = parse_sets(args.sets)
    if args.steps is not None:
        overrides["steps"] = args.steps
    out = Path(args.out or f"runs/{args.task}")
    eng = Engine(task=args.task, out=out, config_file=args.config, **overrides)
    eng.fit()
    metrics = eng.evaluate(out=out)
    _print_metrics(metrics)
    print(f"\nrun directory: {out.resolve()}")
    for name in ("metrics.json", "samples.png", "collapse.png", "last.pt", "config.json", "train_log.csv"):
        if (out / name).exists():
            print(f"  {name:<14} {(out / name).resolve()}")
    return 0


def cmd_prepare(args, rest: list[str]) -> int:
    """``catdiff prepare TASK [task flags]``: the task's one-off preparation (its own flags)."""
    from .config import for_task
    from .hooks import registry

    task = registry().get("tasks", args.task).factory()
    task.setup(for_task(task, args.config, parse_sets(args.sets)))
    parser = argparse.ArgumentParser(prog=f"catdiff prepare {task.name}",
                                     description=f"prepare data for task {task.name!r}")
    task.prepare_arguments(parser)
    task.prepare(parser.parse_args(rest))
    return 0


def _print_metrics(metrics: dict) -> None:
    width = max(map(len, metrics))
    for k, v in metrics.items():
        print(f"  {k:<{width}}  {v:.5g}")


def _parse_infill(spec: str, seq_len: int):
    """``"0:3,5:1"`` -> (known [1, M], mask [1, M]): position:token pairs kept fixed."""
    import torch

    known = torch.zeros(1, seq_len, dtype=torch.long)
    mask = torch.zeros(1, seq_len, dtype=torch.bool)
    for pair in filter(None, spec.split(",")):
        pos, _, tok = pair.partition(":")
        pos, tok = int(pos), int(tok)
        if not 0 <= pos < seq_len:
            raise ValueError(f"--infill position {pos} outside [0, {seq_len})")
        known[0, pos], mask[0, pos] = tok, True
    return known, mask


def cmd_sample(args) -> int:
    import torch

    from .engine import Engine

    eng = Engine.from_checkpoint(args.ckpt, **parse_sets(args.sets))
    known = mask = None
    if args.infill and args.prompt is not None:
        raise ValueError("give either --infill or --prompt, not both")
    if args.infill:
        known, mask = _parse_infill(args.infill, eng.task.seq_len)
    elif args.prompt is not None:
        known, mask = (v[None] for v in eng.task.parse_prompt(args.prompt))
    if known is not None:
        known, mask = known.expand(args.n, -1), mask.expand(args.n, -1)
    labels = torch.full((args.n,), args.label) if args.label is not None else None
    tokens = eng.sample(args.n, steps=args.steps, guidance=args.guidance, labels=labels,
                        known=known, known_mask=mask, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(tokens, out / "samples.pt")
    files = eng.task.save_samples(tokens, labels if labels is not None else eng.default_labels(args.n), out)
    print(f"wrote {out / 'samples.pt'}" + "".join(f"\nwrote {f}" for f in files))
    return 0


def cmd_eval(args) -> int:
    from .engine import Engine

    eng = Engine.from_checkpoint(args.ckpt, **parse_sets(args.sets))
    out = Path(args.out) if args.out else Path(args.ckpt).parent
    metrics = eng.evaluate(n_samples=args.n, out=out)
    _print_metrics(metrics)
    print(f"\nwrote {out / 'metrics.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="catdiff", description="Diffusion models for categorical data (CATDM).")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("list", help="show every task, tokenizer, backbone and metric, and which package gave it")
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser("run", help="train, sample and evaluate a task")
    s.add_argument("task")
    s.add_argument("--out", help="run directory (default runs/TASK); an existing checkpoint there is resumed")
    s.add_argument("--steps", type=int, help="training steps (default: the task's)")
    _engine_args(s)
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("prepare", help="one-off data preparation of a task (tokenizer, token shards); "
                       "`catdiff prepare TASK --help` lists the task's flags", add_help=False)
    s.add_argument("task")
    _engine_args(s)
    s.set_defaults(fn=cmd_prepare)

    s = sub.add_parser("sample", help="draw samples from a checkpoint")
    s.add_argument("ckpt")
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--steps", type=int)
    s.add_argument("--guidance", type=float)
    s.add_argument("--label", type=int, help="class label (conditional tasks)")
    s.add_argument("--infill", help="keep tokens fixed: 'pos:token,pos:token,...'")
    s.add_argument("--prompt", help="keep tokens fixed, in the task's own notation (e.g. text with gaps)")
    s.add_argument("--seed", type=int)
    s.add_argument("--out", default="samples")
    s.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    s.set_defaults(fn=cmd_sample)

    s = sub.add_parser("eval", help="evaluate a checkpoint (likelihood bound, sample metrics)")
    s.add_argument("ckpt")
    s.add_argument("--n", type=int, help="number of samples for the sample metrics")
    s.add_argument("--out", help="where to write metrics.json (default: the checkpoint's directory)")
    s.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    s.set_defaults(fn=cmd_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    args, rest = build_parser().parse_known_args(argv)
    try:
        if args.fn is cmd_prepare:
            return cmd_prepare(args, rest)
        if rest:
            build_parser().error(f"unrecognized arguments: {' '.join(rest)}")
        return args.fn(args)
    except (KeyError, ValueError, FileNotFoundError, RuntimeError, NotImplementedError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"catdiff: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
