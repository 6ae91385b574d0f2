"""``lightning-post runs clean``: the MLflow store's housekeeping (the marking itself:
:func:`lightning_post.tracking.mark_stale_runs`)."""

from __future__ import annotations

from lightning_post.tracking import DEFAULT_TRACKING_URI, mark_stale_runs


def main(argv: list[str]) -> None:
    """``lightning-post runs clean [--tracking_uri URI]``: mark ``KILLED`` the RUNNING runs of this machine whose
    process is gone (``kill -9``, a power cut); each ``fit`` does the same on its store before it starts."""
    import argparse

    from lightning_post.help import plain

    ap = argparse.ArgumentParser(prog="lightning-post runs", description=plain(main.__doc__ or ""))
    ap.add_argument("action", choices=["clean"])
    ap.add_argument("--tracking_uri", default=DEFAULT_TRACKING_URI)
    args = ap.parse_args(argv)
    stale = mark_stale_runs(args.tracking_uri)
    print(f"{len(stale)} stale run(s) marked KILLED" + (f": {', '.join(stale)}" if stale else ""))
