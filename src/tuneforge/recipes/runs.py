"""`tuneforge runs [DIR]`: a table of every run folder (verb, task, model, method, primary metric before -> after,
tokens/s, time, status), read from the folders alone. `tuneforge runs compare A B ...`: their config differences,
metrics side by side and one chart."""

from __future__ import annotations

from pathlib import Path

from tuneforge.errors import UserError


def run(args) -> int:
    what = list(args.what)
    root = Path(args.dir or "runs")
    if what and what[0] == "compare":
        from tuneforge.report.runs_compare import compare_runs

        print(compare_runs(root, what[1:], Path(args.out or "runs-compare.png")))
        return 0
    from tuneforge.report.runs_table import filter_runs, listing, read_runs, sort_key, sort_runs

    if len(what) > 1:
        raise UserError(f"runs: one folder at most, got {len(what)} ({' '.join(what)}); to set runs side by side: "
                        f"`tuneforge runs compare {' '.join(what)}`")
    if what:
        if args.dir:
            raise UserError(f"runs: give the folder once, as DIR ({what[0]}) or --dir ({args.dir})")
        root = Path(what[0])
    sort_key(args.sort)  # a bad --sort is reported before the folders are read
    found = read_runs(root, nested=args.all)
    shown = filter_runs(found, task=args.only_task, verb=args.only_verb, status=args.only_status)
    filtered = any(v is not None for v in (args.only_task, args.only_verb, args.only_status))
    print(listing(sort_runs(shown, args.sort, args.reverse), root, shown_of=len(found) if filtered else None))
    if filtered and not shown and found:
        for flag, values in (("--verb", {r.verb for r in found}), ("--task", {t for r in found for t in r.tasks}),
                             ("--status", {r.status for r in found})):
            print(f"  {flag} values here: {', '.join(sorted(str(v) for v in values if v))}")
    return 0
