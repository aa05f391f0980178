"""Command line: ``catdiff run|list|prepare|sample|eval``."""
from __future__ import annotations

import argparse
import contextlib
import errno
import io
import os
import sys
import traceback
from pathlib import Path

from .api.errors import Aborted, Stopped, TrainingInterrupted, UserError, check_writable, naming
from .run.config import parse_sets
from .run.interrupts import stop_on_sigterm


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable), e.g. --set lr=1e-3")
    p.add_argument("--config", help="JSON or TOML file of config values")


def cmd_list(args) -> int:
    from .api.hooks import KINDS, registry

    if args.name:
        from .run.config import settings_registry

        return _list_settings(settings_registry(), args.name)
    reg = registry()
    for kind in KINDS:
        print(f"{kind}:")
        comps = reg.components[kind]
        if not comps:
            print("  (none)")
        for name in sorted(comps):
            c = comps[name]
            desc = c.description
            print(f"  {name:<24} from {c.source}" + (f"  - {desc}" if desc else ""))
            if (kind, name) in reg.shadowed:
                print(f"  {'':<24} shadows the same name from {', '.join(reg.shadowed[(kind, name)])}")
    for note in reg.notes:
        print(f"note: {note}")
    return 0  # plugins that failed to load: main's warnings, on stderr


def _list_settings(reg, name: str) -> int:
    """``catdiff list NAME``: the settings of the method, backbone or task NAME (``run``: the
    run-level keys), one line each: key, type, default, allowed values, resume, meaning."""
    from .run.config import RUN_SETTINGS
    from .api.settings import declared

    found = [("run-level keys", list(RUN_SETTINGS.values()))] if name == "run" else []
    for kind in ("methods", "backbones", "tasks"):
        if name in reg.components[kind]:
            comp = reg.components[kind][name]
            found.append((f"{kind[:-1]} {name} (from {comp.source})", list(declared(comp.factory))))
    if not found:
        known = sorted({n for kind in ("methods", "backbones", "tasks") for n in reg.components[kind]} | {"run"})
        raise UserError(f"no method, backbone or task named {name!r}. Known: {', '.join(known)}")
    for title, settings in found:
        print(f"{title}: {len(settings)} settings" + (" (set them with --set KEY=VALUE)" if settings else ""))
        if title.startswith("method "):
            samplers = reg.components["methods"][name].factory.samplers
            print(f"  samplers (--set sampler=NAME): {samplers[0]} (default)" + "".join(f", {s}" for s in samplers[1:]))
        for st in settings:
            default = "auto" if st.default is None else repr(st.default)
            allowed = st.allowed()
            print(f"  {st.name:<18} {st.type.__name__ + (' | auto' if st.auto else ''):<12} {default:<12} "
                  f"{'may change on resume' if st.mutable else 'fixed on resume':<21} {st.doc}"
                  + (f" [{allowed}]" if allowed else ""))
    return 0


def cmd_run(args) -> int:
    from .run.engine import Engine
    from .run.rundir import files, written

    overrides = parse_sets(args.sets)
    _check_agree(overrides, "steps", "--steps", args.steps)
    if args.steps is not None:
        overrides["steps"] = args.steps
    out = Path(args.out if args.out is not None else f"runs/{args.task}")
    eng = Engine(task=args.task, out=out, config_file=args.config, **overrides)
    before = files(out)
    with eng.writing():  # the run lock through training and evaluation
        eng.fit()
        if eng.rank != 0:  # evaluation runs once, on rank 0
            return 0
        with stop_on_sigterm("the final evaluation"):
            eng.evaluate(out=out, on_metrics=_print_metrics)
    print(f"\nrun directory: {out.resolve()}")
    for path in written(out, before):
        print(f"  {path.name:<14} {path.resolve()}")
    return 0


def cmd_prepare(args, rest: list[str]) -> int:
    """``catdiff prepare TASK [task flags]``: the task's one-off preparation (its own flags)."""
    from .run.config import for_task
    from .api.hooks import registry

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


def _parse_infill(spec: str, seq_len: int, vocab_size: int):
    """``"0:3,5:1"`` -> (known [1, M], mask [1, M]): position:token pairs kept fixed."""
    import torch

    known = torch.zeros(1, seq_len, dtype=torch.long)
    mask = torch.zeros(1, seq_len, dtype=torch.bool)
    for pair in spec.split(","):
        pos, sep, tok = pair.strip().partition(":")
        try:
            pos, tok = int(pos), int(tok)
        except ValueError:
            raise UserError(f"--infill expects position:token pairs separated by commas, got {pair!r}") from None
        if not sep:
            raise UserError(f"--infill expects position:token pairs, got {pair!r}")
        if not 0 <= pos < seq_len:
            raise UserError(f"--infill position {pos} outside [0, {seq_len - 1}] (seq_len={seq_len})")
        if not 0 <= tok < vocab_size:
            raise UserError(f"--infill token {tok} at position {pos} outside the data vocabulary [0, {vocab_size - 1}]")
        if mask[0, pos] and known[0, pos] != tok:
            raise UserError(f"--infill position {pos} is given twice ({int(known[0, pos])}, then {tok}); give it once")
        known[0, pos], mask[0, pos] = tok, True
    return known, mask


def _check_known(known, mask, vocab_size: int, seq_len: int, source: str) -> None:
    """A task's parsed prompt: shape [M] and data token ids only (never [mask] / [null])."""
    if tuple(known.shape) != (seq_len,) or tuple(mask.shape) != (seq_len,):
        raise RuntimeError(f"{source} returned shapes {tuple(known.shape)}, {tuple(mask.shape)}; expected [{seq_len}]")
    bad = mask & ((known < 0) | (known >= vocab_size))
    if bad.any():
        i = int(bad.nonzero()[0])
        raise UserError(f"--prompt: position {i} holds id {int(known[i])}, outside the data vocabulary [0, {vocab_size - 1}]")


def _check_agree(sets: dict, key: str, flag: str, value) -> None:
    """A flag and the --set key it stands for name one setting: two different values are refused."""
    if value is None or key not in sets:
        return
    try:
        same = float(sets[key]) == float(value)
    except ValueError:
        same = str(sets[key]) == str(value)
    if not same:
        raise UserError(f"{flag} {value} and --set {key}={sets[key]} disagree; give one")


# run-level keys that only training reads: at sample or eval time they would change nothing
TRAINING_GROUPS = ("Optimisation", "Bookkeeping")


def _sample_time_sets(items: list[str], command: str) -> dict:
    """The --set values of ``catdiff sample`` / ``eval``: a key that cannot apply to trained
    weights (their method or backbone, a training setting) is refused rather than ignored."""
    from .run.config import RUN_GROUPS

    sets = parse_sets(items)
    for key in sets:
        if key in ("method", "backbone"):
            raise UserError(f"--set {key}: the checkpoint's {key} is the one its weights were trained with; "
                            f"`catdiff {command}` cannot change it (train a run with it instead)")
        if RUN_GROUPS.get(key) in TRAINING_GROUPS:
            raise UserError(f"--set {key}: a training setting; `catdiff {command}` trains nothing, so it would "
                            f"have no effect: drop it")
    return sets


def _not_another_run(out: Path, ckpt: str, what: str) -> None:
    """Refuse an --out that holds another run or export: ``what`` would replace its files."""
    from .run.export import WEIGHTS
    from .run.rundir import CKPT_NAME

    ckpt = Path(ckpt)
    own = ckpt if ckpt.is_dir() else ckpt.parent
    held = next((n for n in (CKPT_NAME, WEIGHTS) if (out / n).is_file()), None)
    if held and out.resolve() != own.resolve():
        raise UserError(f"--out {out} holds another run ({held}); {what} would replace its files: pass a new "
                        f"or empty --out")


def _check_sample_args(args, eng) -> None:
    if args.n < 1:
        raise UserError(f"--n must be >= 1, got {args.n}")
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    if args.guidance is not None and (args.guidance < 0 or not eng.task.num_classes and args.guidance > 0):
        raise UserError(f"--guidance {args.guidance}: needs >= 0, and > 0 only on a class-conditional task")
    if args.label is not None and not 0 <= args.label < eng.task.num_classes:
        have = f"classes 0..{eng.task.num_classes - 1}" if eng.task.num_classes else "no classes"
        raise UserError(f"--label {args.label}: task {eng.task.name!r} has {have}")
    if args.infill and args.prompt is not None:
        raise UserError("give either --infill or --prompt, not both")


def cmd_sample(args) -> int:
    import torch

    from .run.checkpoint import write_atomic
    from .run.engine import Engine
    from .run.rundir import files, written

    out = Path(args.out)
    check_writable(out, "samples")
    _not_another_run(out, args.ckpt, "the samples")
    sets = _sample_time_sets(args.sets, "sample")
    for key, flag, value in (("sample_steps", "--steps", args.steps), ("seed", "--seed", args.seed),
                             ("guidance", "--guidance", args.guidance), ("n_samples", "--n", args.n)):
        _check_agree(sets, key, flag, value)  # the flags go to eng.sample
    if args.n is None:
        from .run.config import RUN_SETTINGS

        args.n = RUN_SETTINGS["n_samples"].coerce(sets["n_samples"]) if "n_samples" in sets else SAMPLE_N
    eng = Engine.load(args.ckpt, **sets)
    if eng.rank != 0:  # under torchrun: sampling runs once, on rank 0
        return 0
    _check_sample_args(args, eng)
    known = mask = None
    if args.infill:
        known, mask = _parse_infill(args.infill, eng.task.seq_len, eng.task.vocab_size)
    elif args.prompt is not None:
        known, mask = eng.task.parse_prompt(args.prompt)
        _check_known(known, mask, eng.task.vocab_size, eng.task.seq_len, f"task {eng.task.name!r} parse_prompt")
        known, mask = known[None], mask[None]
    if known is not None:
        known, mask = known.expand(args.n, -1), mask.expand(args.n, -1)
    labels = torch.full((args.n,), args.label) if args.label is not None else None
    tokens = eng.sample(args.n, steps=args.steps, guidance=args.guidance, labels=labels,
                        known=known, known_mask=mask, seed=args.seed)
    before = files(out)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()  # in memory first: torch's zip writer reports a full disk as "unexpected pos"
    torch.save(tokens, buf)
    write_atomic(buf.getbuffer(), out / "samples.pt", "sample file")
    with naming(out):  # a task's write that names no file: name the directory
        eng.task.save_samples(tokens, labels if labels is not None else eng.default_labels(args.n), out)
    for path in written(out, before):
        print(f"wrote {path}")
    return 0


def cmd_eval(args) -> int:
    from .run.engine import Engine
    from .run.rundir import files, written

    if args.n is not None and args.n < 1:
        raise UserError(f"--n must be >= 1, got {args.n}")
    ckpt = Path(args.ckpt)
    out = Path(args.out) if args.out is not None else ckpt if ckpt.is_dir() else ckpt.parent
    check_writable(out, "metrics.json")
    _not_another_run(out, args.ckpt, "the evaluation")
    sets = _sample_time_sets(args.sets, "eval")
    _check_agree(sets, "n_samples", "--n", args.n)  # --n goes to evaluate
    eng = Engine.load(args.ckpt, **sets)
    if eng.rank != 0:  # under torchrun: evaluation runs once, on rank 0
        return 0
    judging = contextlib.nullcontext()
    if args.judge:  # checked before any sample is drawn (catdiff.run.judge)
        from .run.judge import Judge

        judging = Judge.for_engine(args.judge, eng).judging(eng)
    before = files(out)
    with judging:
        eng.evaluate(n_samples=args.n, out=out, on_metrics=_print_metrics)
    print()
    for path in written(out, before):
        print(f"wrote {path}")
    return 0


def cmd_export(args) -> int:
    from .run.engine import Engine

    check_writable(args.dir, "the export", flag="DIR")
    eng = Engine.from_checkpoint(args.ckpt)
    for path in eng.export(args.dir, force=args.force):
        print(f"wrote {path}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, with a hint where a value that starts with '-' was read as an option."""

    def error(self, message: str):
        if "expected one argument" in message:
            message += " (a value that starts with '-' is written with '=', e.g. --infill=-1:3)"
        super().error(message)


SAMPLE_N = 64  # catdiff sample's --n when neither it nor --set n_samples is given


def _path(value: str) -> str:
    """An argparse type: a path, not an empty string (which would silently mean "here")."""
    if not value.strip():
        raise argparse.ArgumentTypeError("expected a directory, got an empty string")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="catdiff", description="Diffusion models for categorical data (CATDM).")
    p.add_argument("--debug", action="store_true", help="show the traceback of every error (or CATDIFF_DEBUG=1)")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("list", help="show every task, tokenizer, backbone and metric, and which package gave it; "
                                    "`catdiff list NAME`: the settings of one method, backbone or task")
    s.add_argument("name", nargs="?", help="a method, backbone or task (or `run`): list its settings")
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser("run", help="train, sample and evaluate a task")
    s.add_argument("task")
    s.add_argument("--out", type=_path, help="run directory (default runs/TASK); an existing checkpoint there is resumed")
    s.add_argument("--steps", type=int, help="training steps (default: the task's)")
    _engine_args(s)
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("prepare", help="one-off data preparation of a task (tokenizer, token shards); "
                       "`catdiff prepare TASK --help` lists the task's flags", add_help=False)
    s.add_argument("task")
    _engine_args(s)
    s.set_defaults(fn=cmd_prepare)

    s = sub.add_parser("sample", help="draw samples from a checkpoint")
    s.add_argument("ckpt", help="a checkpoint, a run directory (its last.pt) or a `catdiff export` directory")
    s.add_argument("--n", type=int, help=f"number of samples (default: --set n_samples, else {SAMPLE_N})")
    s.add_argument("--steps", type=int)
    s.add_argument("--guidance", type=float)
    s.add_argument("--label", type=int, help="class label (conditional tasks)")
    s.add_argument("--infill", help="keep tokens fixed: 'pos:token,pos:token,...'")
    s.add_argument("--prompt", help="keep tokens fixed, in the task's own notation (e.g. text with gaps)")
    s.add_argument("--seed", type=int)
    s.add_argument("--out", type=_path, default="samples")
    s.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    s.set_defaults(fn=cmd_sample)

    s = sub.add_parser("export", help="write a checkpoint's sampling weights as DIR/model.safetensors + config.json")
    s.add_argument("ckpt", help="a checkpoint (or a run directory holding last.pt)")
    s.add_argument("dir", type=_path, help="the export directory (catdiff sample/eval DIR, Engine.from_pretrained(DIR))")
    s.add_argument("--force", action="store_true", help="overwrite an existing export in DIR")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("eval", help="evaluate a checkpoint (likelihood bound, sample metrics)")
    s.add_argument("ckpt", help="a checkpoint, a run directory (its last.pt) or a `catdiff export` directory")
    s.add_argument("--n", type=int, help="number of samples for the sample metrics")
    s.add_argument("--out", type=_path, help="where to write metrics.json (default: the checkpoint's directory)")
    s.add_argument("--judge", metavar="JUDGE_CKPT",
                   help="an autoregressive (method=ar) checkpoint of the same task: adds the samples' judge_gen_ppl, "
                        "judge_bits_per_token and unigram_entropy_bits, and the real test data's (*_real_test)")
    s.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    s.set_defaults(fn=cmd_eval)
    return p


# OS errors that are the user's environment (a path, a permission, a full disk), not a bug
USER_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EISDIR, errno.ENOTDIR,
               errno.EEXIST, errno.ENOTEMPTY, errno.EDQUOT, errno.ENAMETOOLONG, errno.ELOOP}
USER_OSERRORS = (FileNotFoundError, PermissionError, FileExistsError, IsADirectoryError, NotADirectoryError)


def _origin(exc: BaseException) -> str:
    """Where a bug was raised: the plugin distribution (or catdiff) of the innermost frame
    that belongs to catdiff or a package registered in its entry-point group."""
    import importlib.metadata as md

    owners = {"catdiff": "catdiff"}
    try:
        for ep in md.entry_points(group="catdiff"):
            top = ep.value.split(":")[0].split(".")[0]
            owners[top] = f"plugin {ep.dist.name} {ep.dist.version}" if ep.dist else f"plugin {top}"
    except Exception:  # noqa: BLE001 - the report must not fail
        pass
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        for top, owner in owners.items():
            if f"{os.sep}{top}{os.sep}" in frame.filename or frame.filename.endswith(f"{os.sep}{top}.py"):
                return f"{owner} ({Path(frame.filename).name}:{frame.lineno})"
    return "catdiff"


def _out_of_memory(e: BaseException) -> bool:
    """torch's accelerator OOM (torch.OutOfMemoryError): the user's settings, not a bug."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(e, getattr(torch, "OutOfMemoryError", ()))


def _warn_broken_plugins(debug: bool) -> None:
    """One warning line per plugin that failed to load (every command builds the registry);
    the command goes on with the others. ``--debug`` adds each one's traceback."""
    from .api.hooks import registry

    reg = registry()
    for name, err in reg.failed.items():
        if debug:
            print(reg.tracebacks.get(name, ""), end="", file=sys.stderr)
        hint = "" if debug else "; run with --debug for the traceback"
        print(f"catdiff: warning: plugin {name} failed to load and is skipped: {err}{hint}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args, rest = build_parser().parse_known_args(argv)
    debug = args.debug or os.environ.get("CATDIFF_DEBUG", "") not in ("", "0")
    try:
        _warn_broken_plugins(debug)
        if args.fn is cmd_prepare:
            return cmd_prepare(args, rest)
        if rest:
            build_parser().error(f"unrecognized arguments: {' '.join(rest)}")
        return args.fn(args)
    except (TrainingInterrupted, Aborted, Stopped) as e:
        print(f"catdiff: {e}", file=sys.stderr)
        return 128 + e.signum
    except BrokenPipeError:  # the reader of stdout went away (`catdiff list | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except KeyboardInterrupt:
        print("catdiff: interrupted; files already written are complete (checkpoints are written atomically)",
              file=sys.stderr)
        return 130
    except UserError as e:
        if debug:
            traceback.print_exc()
        print(f"catdiff: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if not (isinstance(e, USER_OSERRORS) or e.errno in USER_ERRNOS):
            return _bug(e)
        if debug:
            traceback.print_exc()
        msg = f"{e.filename + ': ' if e.filename else ''}{e.strerror}" if e.strerror else str(e)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):  # say what a full disk left behind
            msg += (f"{'' if e.filename else ' (run with --debug to see where)'}. That write may be incomplete; "
                    f"the files written before it are complete (checkpoints, config.json and metrics.json are "
                    f"written atomically). Free space or pass another --out, then rerun")
        print(f"catdiff: error: {msg}", file=sys.stderr)
        return 2
    except ImportError as e:  # an optional dependency the plugin names how to install
        if "pip install" not in str(e):
            return _bug(e)
        print(f"catdiff: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a bug: show everything
        if not _out_of_memory(e):
            return _bug(e)
        if debug:
            traceback.print_exc()
        first = str(e).strip().splitlines()[0] if str(e).strip() else "out of memory"
        print(f"catdiff: error: {first.split('. Tried')[0]}: the run does not fit the device's memory; "
              f"lower batch_size (with accum=N for the same batch), set precision=bf16 or choose a smaller "
              f"model; checkpoints already written are intact, so resuming with a smaller batch_size keeps "
              f"the steps trained", file=sys.stderr)
        return 2


def _bug(e: BaseException) -> int:
    traceback.print_exc()
    print(f"catdiff: internal error ({type(e).__name__}) raised in {_origin(e)}. This is a bug, not a "
          f"problem with your input; please report it with the traceback above", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
