"""``backdrop data validate`` and ``backdrop data split``: check offline logs at the boundary, split them leak-free."""

from __future__ import annotations

import argparse
import zoneinfo
from pathlib import Path
from typing import Any

from experiments.commands.arguments import add_progress_argument, group_parser
from experiments.output_folder import add_overwrite_argument, open_output_run
from offline_data.errors import InputUnreadableError

TABLES = ("impressions", "dwell", "preferences", "assets")


def _count(minimum: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers like 0.8,0.1,0.1, got {text!r}") from None
    if len(values) != 3 or any(v < 0 for v in values) or abs(sum(values) - 1) > 1e-6:
        raise argparse.ArgumentTypeError(f"expected three shares >= 0 that sum to 1, got {text!r}")
    return values


def _timezone(text: str) -> str:
    try:
        zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise argparse.ArgumentTypeError(
            f"expected an IANA time zone like UTC or Europe/Paris, got {text!r}"
        ) from None
    return text


def register(subparsers: Any) -> None:
    commands = group_parser(subparsers, "data", "validate offline logs and make leak-free splits")

    validate = commands.add_parser(
        "validate",
        help="validate log tables; write accepted rows, rejects and a summary",
        description=(
            "Validate the impressions, dwell, preferences and assets tables (Parquet, CSV or JSON Lines; a file "
            "or a folder of part files each). Accepted rows are written as Parquet with the schema's types, "
            "rejected rows to <table>.rejects.parquet with their reasons, and summary.json checks that "
            "read = accepted + rejected. Exit status: 0 all rows accepted, 1 rows rejected (rejects written), "
            "2 an input cannot be read at all, 73 the output folder holds an earlier run (--overwrite empties it)."
        ),
    )
    validate.add_argument(
        "dir",
        nargs="?",
        type=Path,
        metavar="DIR",
        help="folder holding the tables, named by table: impressions.parquet|.csv|.jsonl or impressions/ ...",
    )
    for table in TABLES:
        validate.add_argument(
            f"--{table}", type=Path, metavar="PATH", help=f"the {table} table (file or folder); overrides DIR's"
        )
    validate.add_argument("--out", type=Path, help="output folder (default: DIR/validated, or beside the first table)")
    validate.add_argument(
        "--strict", action="store_true", help="fail on any rejected row (rejects are written, accepted tables are not)"
    )
    validate.add_argument(
        "--max-problems", type=_count(0), default=20, metavar="N", help="problems listed per file (default: 20)"
    )
    validate.add_argument(
        "--check-files",
        action="store_true",
        help="also check that every asset file exists and matches its sha256 (reads every file)",
    )
    validate.add_argument(
        "--assume-timezone",
        type=_timezone,
        metavar="ZONE",
        help="read timestamps written without a zone as times in ZONE (IANA name, e.g. UTC, Europe/Paris) and "
        "convert them to UTC (default: reject them, naming the row)",
    )
    validate.add_argument(
        "--allow-outside-assets",
        action="store_true",
        help="with --check-files, also read asset paths outside the assets table's folder (../, absolute paths)",
    )
    validate.add_argument(
        "--batch-rows", type=_count(1), default=262_144, metavar="N", help="rows per batch (default: 262144)"
    )
    add_overwrite_argument(validate)
    add_progress_argument(validate)
    validate.set_defaults(handler=run_validate)

    split = commands.add_parser(
        "split",
        help="split validated logs into leak-free train/validation/test",
        description=(
            "Split the output of 'backdrop data validate' so that no product (or segment, or time span) is shared "
            "between train, validation and test. Deterministic for a seed. Preference pairs whose images' products "
            "fall in different splits are dropped for leakage and reported."
        ),
    )
    split.add_argument("dir", type=Path, metavar="DIR", help="validated folder (or a folder holding validated/)")
    split.add_argument(
        "--by", choices=("product", "segment", "time"), default="product", help="grouping kept within one split"
    )
    split.add_argument(
        "--fractions",
        type=_fractions,
        default=(0.8, 0.1, 0.1),
        metavar="T,V,T",
        help="train,validation,test shares of groups (or of impressions by time); default 0.8,0.1,0.1",
    )
    split.add_argument("--seed", type=_count(0), default=0, help="salt of the group hash (default: 0)")
    split.add_argument("--out", type=Path, help="output folder (default: DIR/splits/<by>)")
    add_overwrite_argument(split)
    split.set_defaults(handler=run_split)


def run_validate(args: argparse.Namespace) -> int:
    # heavy (pyarrow): imported when the command runs, so `backdrop --help` stays fast
    from offline_data.io import SUFFIXES, find_table, resolve_source
    from offline_data.validation import ValidationConfig, validate_logs

    sources = {}
    not_found = []
    if args.dir is not None:
        if not args.dir.is_dir():
            raise InputUnreadableError(f"{args.dir}: folder not found")
        for table in TABLES:
            source = find_table(args.dir, table)
            if source is not None:
                sources[table] = source
            elif getattr(args, table) is None:
                looked = ", ".join([f"{table}{s}" for s in SUFFIXES] + [f"{table}/"])
                not_found.append(f"{table} (looked for {looked})")
    for table in TABLES:
        path = getattr(args, table)
        if path is not None:
            sources[table] = resolve_source(table, path)
    if not sources:
        where = f" in {args.dir}" if args.dir is not None else ""
        raise InputUnreadableError(
            f"no log tables found{where}; give DIR or --impressions/--dwell/--preferences/--assets"
        )
    config = ValidationConfig(
        strict=args.strict,
        max_problems=args.max_problems,
        check_files=args.check_files,
        batch_rows=args.batch_rows,
        allow_outside_assets=args.allow_outside_assets,
        assume_timezone=args.assume_timezone,
    )
    out = args.out or (
        args.dir / "validated" if args.dir is not None else next(iter(sources.values())).base_dir / "validated"
    )
    with open_output_run(args, out, inputs=[source.path for source in sources.values()]) as run:
        summary = validate_logs(sources, out, config)
        counts = {
            f"{t}/{k}": getattr(s, k) for t, s in summary.tables.items() for k in ("read", "accepted", "rejected")
        }
        run.log_metrics(counts, step=0)
    print(summary.render_table())
    for table in not_found:
        print(f"not found: {table}")
    problems = summary.render_problems()
    if problems:
        print()
        print(problems)
    print(f"\naccepted tables, rejects and summary.json written to {out}")
    return 1 if summary.rejected else 0


def run_split(args: argparse.Namespace) -> int:
    # heavy (pyarrow): imported when the command runs, so `backdrop --help` stays fast
    from offline_data.splits import SplitConfig, split_logs

    directory = args.dir
    if (
        not (directory / "impressions.parquet").is_file()
        and (directory / "validated" / "impressions.parquet").is_file()
    ):
        directory = directory / "validated"
        print(f"using the validated tables in {directory}")
    config = SplitConfig(by=args.by, fractions=args.fractions, seed=args.seed)
    out = args.out or directory / "splits" / args.by
    with open_output_run(args, out, inputs=[directory]):
        report = split_logs(directory, out, config)
    print(report.render())
    print(f"\nsplits and split_report.json written to {out}")
    return 0
