"""``lightning-post-feedback``: the old name of ``lightning-post data feedback``, kept for one release (0.1.x) with
its dashed flags; it runs the same command. Use instead:

    lightning-post data feedback --files feedback.jsonl --output_dir data/feedback
"""

from __future__ import annotations

import argparse
import sys

from lightning_post.errors import UserError


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="lightning-post-feedback", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="feedback JSON Lines files")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--overwrite", action="store_true",
                    help="write into an existing --out-dir that holds other files (they are kept)")
    ap.add_argument("--good-rating", type=float, default=4.0, help="mean rating at or above which an answer is desirable")
    ap.add_argument("--bad-rating", type=float, default=2.0, help="mean rating at or below which it is undesirable")
    ap.add_argument("--min-rating", type=float, default=4.5, help="mean rating an answer needs to become SFT data")
    ap.add_argument("--tracking-uri", default="sqlite:///mlruns/mlflow.db")
    ap.add_argument("--experiment", default="feedback")
    ap.add_argument("--no-mlflow", action="store_true", help="do not record the report on MLflow")
    args = ap.parse_args(argv)
    print("lightning-post-feedback: an alias of `lightning-post data feedback` (kept for the 0.1 releases)",
          file=sys.stderr)
    from lightning_post.commands.feedback import DataFeedback

    try:
        DataFeedback(args.files, args.out_dir, good_rating=args.good_rating, bad_rating=args.bad_rating,
                     min_rating=args.min_rating, experiment_name=args.experiment, log_mlflow=not args.no_mlflow,
                     overwrite=args.overwrite, tracking_uri=args.tracking_uri).run()
    except UserError as e:
        print(f"lightning-post-feedback: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
