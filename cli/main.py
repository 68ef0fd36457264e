"""The ``kiln`` command line.

    kiln run configs/demo.toml                 # the whole DAG (finished stages are cached)
    kiln run configs/demo.toml --until clean   # a stage and what it depends on
    kiln run configs/demo.toml -s pretrain.run.steps=50 -s tokenizer.vocab_size=4000
    kiln plan configs/demo.toml -s tokenizer.vocab_size=3000   # what a run would rebuild, and why
    kiln generate <model artifact> "The history of"      # sample from a trained model (KV cache, streamed)
    kiln chat <sft or dpo artifact>                       # interactive chat
    kiln artifacts ls | show <stage>/<key> | gc [--keep-runs N] [--yes]

Prefect is imported only by ``run``, so ``plan`` and the artifact commands stay fast. A
`KilnError` is printed as one line without a traceback, and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kiln.errors import KilnError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiln", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--root", help="artifact store root (default: $KILN_HOME or ./kiln-artifacts)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pipeline (or a prefix of it) as a Prefect flow")
    run.add_argument("config", nargs="?", default="configs/demo.toml", help="pipeline TOML file")
    run.add_argument("-s", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. pretrain.run.steps=50 (repeatable)")
    run.add_argument("--until", default="all", help="run only this stage and what it needs (default: all)")
    run.add_argument("--summary-json", metavar="FILE", help="also write the run summary (states, artifacts) as JSON")
    run.add_argument("--debug", action="store_true",
                     help="show Prefect's full log of a failure (tracebacks) before the kiln: error line")

    run.add_argument("--dask-address", metavar="HOST:PORT",
                     help="run the data stages on an existing Dask cluster (sets clean/pretokenize dask_address)")

    plan = sub.add_parser("plan", help="show what `run` would build and why, without running anything")
    plan.add_argument("config", nargs="?", default="configs/demo.toml", help="pipeline TOML file")
    plan.add_argument("-s", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config value, as for run (repeatable)")
    plan.add_argument("--until", default="all", help="plan only this stage and what it needs (default: all)")

    for name, text in (("generate", "complete a prompt with a trained model"), ("chat", "talk to a model")):
        p = sub.add_parser(name, help=text)
        p.add_argument("model", help="a model artifact directory (pretrain/sft/dpo), its final/, or an HF export")
        if name == "generate":
            p.add_argument("prompt")
            p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
        p.add_argument("--tokenizer", metavar="DIR", help="tokenizer directory, if the model directory has none")
        p.add_argument("--system", default="", help="system prompt (chat template)")
        p.add_argument("--max-new-tokens", type=int, default=128)
        p.add_argument("--temperature", type=float, default=0.8)
        p.add_argument("--top-k", type=int, default=50)
        p.add_argument("--top-p", type=float, default=None)
        p.add_argument("--seed", type=int, default=None)
        p.add_argument("--device", default="cpu")

    arts = sub.add_parser("artifacts", help="inspect and clean the artifact store")
    arts_sub = arts.add_subparsers(dest="action", required=True)
    arts_sub.add_parser("ls", help="list artifacts")
    show = arts_sub.add_parser("show", help="print an artifact's manifest")
    show.add_argument("ref", help="<stage>/<key> (a unique key prefix is enough)")
    show.add_argument("--verify", action="store_true", help="recompute sha256 of every file")
    gc = arts_sub.add_parser("gc", help="delete artifacts not used by the latest runs")
    gc.add_argument("--keep-runs", type=int, default=1, help="keep what the last N runs used (default 1)")
    gc.add_argument("--yes", action="store_true", help="delete (without it, only list)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_path_args(args)
        if args.root:
            from storage.store import is_remote_url

            os.environ["KILN_HOME"] = args.root if is_remote_url(args.root) else str(Path(args.root).resolve())
        if args.command == "run":
            return _run(args)
        if args.command == "plan":
            return _plan(args)
        if args.command in ("generate", "chat"):
            return _use_model(args)
        return _artifacts(args)
    except KilnError as exc:
        print(f"kiln: error: {exc}", file=sys.stderr)
        return 2


def _check_path_args(args: argparse.Namespace) -> None:
    """A control character (NUL...) in a path argument is one `kiln: error:` line, not a ValueError later."""
    from kiln.config import check_path_text

    for name in ("root", "config", "model", "summary_json"):
        value = getattr(args, name, None)
        if isinstance(value, str):
            check_path_text(value, f"--{name.replace('_', '-')}" if name in ("root", "summary_json") else name)
    for name in ("KILN_HOME", "PREFECT_HOME"):  # where the store and Prefect's database go
        if name in os.environ:
            check_path_text(os.environ[name], f"${name}")


def _run(args: argparse.Namespace) -> int:
    # The embedded Prefect server's first start runs database migrations, which can take
    # longer than Prefect's 20 s default on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # The embedded server's telemetry service writes to its SQLite database while the server
    # starts up and fails with "database is locked" tracebacks (and, offline, "Failed to send
    # telemetry" errors) on a normal run. Set PREFECT_SERVER_ANALYTICS_ENABLED=true to keep it.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.dag import plan
    from tasks.pipeline_config import load_pipeline_config

    if args.dask_address:
        args.overrides += [f"clean.dask_address={args.dask_address}", f"pretokenize.dask_address={args.dask_address}"]
    plan(load_pipeline_config(args.config, args.overrides), args.until)  # fail fast, before Prefect starts

    from flows.ephemeral import server_dies_with_this_process
    from flows.pipeline import pipeline

    server_dies_with_this_process()  # a kill -9 of kiln run leaves no temporary Prefect server behind
    if not args.debug:
        from flows.quiet import quiet_kiln_errors

        quiet_kiln_errors()  # a KilnError is our one line below, not Prefect's tracebacks above it
    summary: dict[str, Any] = pipeline(config=args.config, overrides=args.overrides, until=args.until)
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=2))
    print_summary(summary)
    return 0


def print_summary(summary: dict[str, Any]) -> None:
    """What `kiln run` prints at the end: each stage's state and artifact, the headline numbers, the samples."""
    print(f"\n{'stage':<12} {'state':<10} artifact")
    for stage, info in summary["stages"].items():
        print(f"{stage:<12} {info['state']:<10} {info['artifact']}")
    if "final_loss" in summary:
        print(f"\nfinal training loss: {summary['final_loss']:.4f}")
    for name, value in summary.get("evaluation", {}).items():
        if isinstance(value, float):
            print(f"eval {name}: {value:.4f}")
        elif isinstance(value, int) and not isinstance(value, bool):  # counts (val_tokens, seq_len) stay ints
            print(f"eval {name}: {value}")
    for sample in summary.get("samples", []):
        print(f"\nprompt: {sample['prompt']!r}\nsample: {sample['text']}")


def _plan(args: argparse.Namespace) -> int:
    from flows.dag import check_until
    from flows.plan import make_plan, render
    from storage.store import open_store
    from tasks.pipeline_config import load_pipeline_config

    check_until(args.until)
    cfg = load_pipeline_config(args.config, args.overrides)
    store = open_store(cfg.store.root or None)
    print(f"plan for {args.config} (until {args.until}), store {store.location}\n")
    print(render(make_plan(cfg, args.until, store)))
    return 0


def _use_model(args: argparse.Namespace) -> int:
    from cli.chat import chat_loop, generate_text
    from storage.local import artifact_problem

    if (problem := artifact_problem(args.model)) is not None:
        raise KilnError(f"{problem}; rerun the stage that built {args.model} to rebuild it")

    sampling = {"tokenizer_dir": args.tokenizer, "system_prompt": args.system, "max_new_tokens": args.max_new_tokens,
                "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed,
                "device": args.device}
    if args.command == "chat":
        chat_loop(args.model, **sampling)
    else:
        generate_text(args.model, args.prompt, chat=args.chat, stream=sys.stdout, **sampling)
        print()
    return 0


def _artifacts(args: argparse.Namespace) -> int:
    from storage.store import open_store

    store = open_store()
    if args.action == "ls":
        for m in store.list():
            counts = ", ".join(f"{k}={v}" for k, v in list(m.get("counts", {}).items())[:4])
            print(f"{m['created_at']}  {m['stage']:<12} {m['key']}  {counts}")
        return 0
    if args.action == "show":
        ref = _find(store, args.ref)
        if args.verify:
            store.verify(ref)
        print(json.dumps(store.manifest(ref), indent=2, ensure_ascii=False))
        return 0
    keep = {key for run in store.recent_runs(args.keep_runs) for key in run["artifacts"].values()}
    doomed = store.gc(keep, dry_run=not args.yes)
    verb = "deleted" if args.yes else "would delete"
    for path in doomed:
        print(f"{verb} {path}")
    print(f"{verb} {len(doomed)} entries; kept {len(keep)} artifacts used by the last {args.keep_runs} run(s)")
    return 0


def _find(store: Any, text: str) -> Any:
    """Resolve ``stage/key`` or a unique key prefix to an artifact with a manifest."""
    matches = [m for m in store.list() if f"{m['stage']}/{m['key']}".startswith(text) or m["key"].startswith(text)]
    if len(matches) != 1:
        raise KilnError(f"artifact {text!r}: {len(matches)} matches; give <stage>/<key> (see kiln artifacts ls)")
    return store.ref(matches[0]["stage"], matches[0]["key"])  # --verify names any damage


if __name__ == "__main__":
    sys.exit(main())
