"""`ham`: the command-line face of the pipeline. Each stage command is a thin wrapper around one module's function;
`dvc.yaml` calls them with the paths spelled out."""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from .common import PipelineError, load_params

PARAMS_OPTION = click.option("--params", "params_path", type=click.Path(path_type=Path), default="params.yaml",
                             show_default=True, help="The params file; the command reads only its own section.")


def friendly_errors(command):
    """Bad input exits non-zero with one clear line instead of a traceback."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except PipelineError as error:
            raise click.ClickException(str(error)) from None
    return wrapper


@click.group()
@click.version_option(package_name="ham10000-repo")
def main():
    """Build, validate and release the HAM10000 dataset repository (see README.md)."""


@main.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--seed", default=20180814, show_default=True, help="Seed of the procedural drawing.")
@friendly_errors
def sample(directory, seed):
    """Write the small, deterministic synthetic sample of raw sources into DIRECTORY (the demo's input)."""
    from .sample import write_sample

    counts = write_sample(directory, seed)
    click.echo(f"sample written to {directory}: " + ", ".join(f"{k} {v} files" for k, v in counts.items()))


@main.command()
@PARAMS_OPTION
@click.option("--out", type=click.Path(path_type=Path), default="data/interim/ingest", show_default=True)
@friendly_errors
def ingest(params_path, out):
    """Read every raw source in params `ingest.sources` into one candidates table plus a rejects ledger."""
    from .ingest import ingest as run
    from .validate import ingest_dependency_problems, untracked_sources

    params = load_params(params_path, "ingest")
    repo = params_path.parent
    for index, path, message in ingest_dependency_problems({"ingest": params}, repo):
        raise PipelineError(f"{params_path}: ingest.sources[{index}].path {path}: {message}")
    for path in untracked_sources({"ingest": params}, repo):
        click.echo(f"warning: raw source {path} is not tracked by a .dvc file of its own; run `dvc add {path}` "
                   f"so it is versioned and can be pushed and pulled", err=True)
    result = run(params["sources"], params_path.parent, out, params["max_pixels"])
    click.echo(f"ingest: {len(result.candidates)} candidates, {len(result.rejects)} rejected "
               f"({result.units_read} raw files read, {result.units_cached} unchanged since the last run; "
               f"{result.decoded} images decoded) -> {out}")


@main.command("train-filter")
@PARAMS_OPTION
@click.option("--candidates", type=click.Path(path_type=Path), default="data/interim/ingest/candidates.csv",
              show_default=True)
@click.option("--objects", type=click.Path(path_type=Path), default="data/interim/ingest/objects", show_default=True)
@click.option("--model", type=click.Path(path_type=Path), default="models/filter.pt", show_default=True)
@click.option("--metrics", type=click.Path(path_type=Path), default="metrics/filter.json", show_default=True)
@friendly_errors
def train_filter(params_path, candidates, objects, model, metrics):
    """Train the image-type network (dsc / macro / clinic) on the annotated candidates."""
    from .train_filter import train_filter as run

    params = load_params(params_path, "filter")
    result = run(candidates, objects, Path(params["annotations"]), params, model, metrics)
    click.echo(f"train-filter: {result['trained_on']} images, held-out accuracy {result['holdout_accuracy']} "
               f"on {result['held_out']} -> {model}")


@main.command("filter")
@PARAMS_OPTION
@click.option("--candidates", type=click.Path(path_type=Path), default="data/interim/ingest/candidates.csv",
              show_default=True)
@click.option("--objects", type=click.Path(path_type=Path), default="data/interim/ingest/objects", show_default=True)
@click.option("--model", type=click.Path(path_type=Path), default="models/filter.pt", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default="data/interim/filter", show_default=True)
@friendly_errors
def filter_(params_path, candidates, objects, model, out):
    """Decide every candidate's image type (annotation first, else the model); keep dermatoscopic images and
    write the review queue of uncertain ones."""
    from .filter import decide

    params = load_params(params_path, "filter")
    decisions = decide(candidates, objects, Path(params["annotations"]), model, params, out / "decisions.csv",
                       out / "review_queue.csv")
    kept = sum(d["keep"] == "true" for d in decisions)
    review = sum(d["review"] == "true" for d in decisions)
    click.echo(f"filter: {kept} of {len(decisions)} kept, {review} queued for review -> {out}")


@main.command()
@PARAMS_OPTION
@click.option("--candidates", type=click.Path(path_type=Path), default="data/interim/ingest/candidates.csv",
              show_default=True)
@click.option("--decisions", type=click.Path(path_type=Path), default="data/interim/filter/decisions.csv",
              show_default=True)
@click.option("--objects", type=click.Path(path_type=Path), default="data/interim/ingest/objects", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default="data/interim/standardised", show_default=True)
@friendly_errors
def standardise(params_path, candidates, decisions, objects, out):
    """Turn every kept image into a 600x450 JPEG by the authors' mogrify recipe (only images not done before)."""
    from .standardise import standardise as run

    counts = run(candidates, decisions, objects, load_params(params_path, "standardise"), out / "images",
                 out / "index.csv")
    click.echo(f"standardise: {counts['kept']} images ({counts['processed']} processed, {counts['reused']} reused, "
               f"{counts['duplicates']} identical duplicates) -> {out}")


@main.command()
@PARAMS_OPTION
@click.option("--candidates", type=click.Path(path_type=Path), default="data/interim/ingest/candidates.csv",
              show_default=True)
@click.option("--decisions", type=click.Path(path_type=Path), default="data/interim/filter/decisions.csv",
              show_default=True)
@click.option("--standardised", type=click.Path(path_type=Path), default="data/interim/standardised/index.csv",
              show_default=True)
@click.option("--registry", type=click.Path(path_type=Path), default="registry", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default="data/interim/metadata", show_default=True)
@friendly_errors
def metadata(params_path, candidates, decisions, standardised, registry, out):
    """Unify diagnoses, normalise and validate the metadata, give stable image and lesion IDs."""
    from .metadata import build_metadata

    params = load_params(params_path, "metadata")
    counts = build_metadata(candidates, decisions, standardised, params, registry, out,
                            Path(params["rules"]) if params.get("rules") else None)
    click.echo(f"metadata: {counts['rows']} rows, {counts['excluded']} excluded (see {out}/excluded.csv), "
               f"{counts['new_image_ids']} new image IDs, {counts['new_lesion_ids']} new lesion IDs")
    for source, figures in counts["unify_coverage"].items():  # how well the diagnosis rules cover each source
        classes = ", ".join(f"{k} {v}" for k, v in figures.items() if v and k != "total")
        click.echo(f"unify coverage {source}: {figures['total']} reports: {classes}")


@main.command()
@PARAMS_OPTION
@click.option("--metadata", "metadata_csv", type=click.Path(path_type=Path),
              default="data/interim/metadata/metadata.csv", show_default=True)
@click.option("--images", type=click.Path(path_type=Path), default="data/interim/metadata/images.csv",
              show_default=True)
@click.option("--registry", type=click.Path(path_type=Path), default="registry/splits.csv", show_default=True)
@friendly_errors
def split(params_path, metadata_csv, images, registry):
    """Assign every new lesion to train / val / test (lesion-disjoint; assigned lesions never move)."""
    from .split import assign_splits

    counts = assign_splits(metadata_csv, images, load_params(params_path, "split"), registry)
    click.echo(f"split: {counts['new_lesions']} new lesions assigned; images per split {counts['images']}")


@main.command()
@PARAMS_OPTION
@click.option("--metadata", "metadata_csv", type=click.Path(path_type=Path),
              default="data/interim/metadata/metadata.csv", show_default=True)
@click.option("--images", type=click.Path(path_type=Path), default="data/interim/metadata/images.csv",
              show_default=True)
@click.option("--splits", type=click.Path(path_type=Path), default="registry/splits.csv", show_default=True)
@click.option("--standardised", type=click.Path(path_type=Path), default="data/interim/standardised/images",
              show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default="release", show_default=True)
@click.option("--summary", "summary_json", type=click.Path(path_type=Path), default="metrics/release.json",
              show_default=True)
@friendly_errors
def release(params_path, metadata_csv, images, splits, standardised, out, summary_json):
    """Write the release folder: images and metadata per split, attribution, manifest with every file's sha256."""
    from .release import build_release, format_summary

    summary = build_release(metadata_csv, images, splits, standardised, load_params(params_path, "release"), out,
                            summary_json, all_params=load_params(params_path))
    click.echo(format_summary(summary))


@main.command()
@click.argument("summary_json", type=click.Path(path_type=Path), default="metrics/release.json")
@friendly_errors
def summary(summary_json):
    """Print a release's counts per split and class, from its summary file (metrics/release.json), its
    release.json, or a release folder."""
    from .release import format_summary, read_summary

    click.echo(format_summary(read_summary(summary_json)))


@main.command()
@click.argument("path", type=click.Path(path_type=Path), default="release")
@click.option("--size-only", is_flag=True, help="Compare sizes only, not sha256 (fast first look).")
@friendly_errors
def verify(path, size_only):
    """Check every file of a release, or of one split folder, against its manifest.csv: missing, altered and
    extra files are named; exit 1 on any."""
    from .verify import format_report, verify as run

    report = run(path, hashes=not size_only)
    click.echo(format_report(report))
    if report.problems:
        sys.exit(1)


@main.command()
@click.argument("rev_a")
@click.argument("rev_b")
@click.option("--repo", type=click.Path(path_type=Path, file_okay=False), default=".", show_default=True,
              help="The git + DVC repository holding both revisions.")
@click.option("--json", "as_json", is_flag=True, help="Print the full comparison as JSON.")
@click.option("--fail-on", default="", help="Comma-separated kinds that make the command exit 1 (for CI): "
                                           "split-move, relabel, added, removed, metadata, content.")
@friendly_errors
def diff(rev_a, rev_b, repo, as_json, fail_on):
    """Compare the releases of two git revisions or tags: images added and removed, relabelled (dx, dx_type),
    other metadata changes, lesions that moved split, per-class counts; read from git and the DVC cache, no
    images checked out."""
    from .diff import diff_revisions, format_diff, parse_fail_on

    kinds = parse_fail_on(fail_on)
    result = diff_revisions(repo, rev_a, rev_b)
    click.echo(json.dumps(result, indent=2, sort_keys=True) if as_json else format_diff(result))
    failed = [kind for kind in kinds if result[kind]]
    if failed:
        click.echo(f"diff: {', '.join(f'{len(result[k])} {k}' for k in failed)} (--fail-on)", err=True)
        sys.exit(1)


@main.command()
@PARAMS_OPTION
@click.option("--release", "release_dir", default="release", show_default=True, help="The release folder.")
@click.option("--dry-run", is_flag=True, help="Run every check, make no tag.")
@friendly_errors
def tag(params_path, release_dir, dry_run):
    """Check the release is built with params `release.version`, matches its manifest, the pipeline is up to date
    and everything is committed; then make the annotated git tag v<version>."""
    from .tagging import tag_release

    result = tag_release(params_path.parent, load_params(params_path, "release"), release_dir, dry_run)
    if result["created"]:
        click.echo(f"tagged {result['tag']} at {result['commit'][:10]}; now `dvc push` and `git push --follow-tags`")
    else:
        click.echo(f"all checks pass: `ham tag` would tag {result['tag']} at {result['commit'][:10]}")


from .unify import unify_command  # noqa: E402  (registered after the stage commands, for --help order)
from .validate import validate_command  # noqa: E402

main.add_command(unify_command, "unify")
main.add_command(validate_command, "validate")

if __name__ == "__main__":
    sys.exit(main())
