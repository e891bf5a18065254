"""`ham`: the command-line face of the pipeline. Each stage command is a thin wrapper around one module's function;
`dvc.yaml` calls them with the paths spelled out. Each stage checks the whole params file first (as `ham validate`
does, the same one-line message), reads only its own section, and exits 1 on bad input with one line, never a
traceback."""
from __future__ import annotations

import errno
import functools
import json
import sys
from pathlib import Path

import click

from .common import PipelineError, load_params
from .pinned_cpu import pin_environment

pin_environment()  # before any torch operation: see pipeline/pinned_cpu.py

# Every module imported here at the top is a code dependency of every stage in dvc.yaml: stage and validation
# modules are imported inside the commands that use them.


def path_option(flag: str, default: str, help: str, dest: str | None = None):
    """A path option of the stage commands, declared once below and shared by every command that takes it."""
    names = [flag] if dest is None else [flag, dest]
    return click.option(*names, type=click.Path(path_type=Path), default=default, show_default=True, help=help)


PARAMS_OPTION = path_option("--params", "params.yaml", "The params file; the command checks all of it and reads "
                            "only its own section.", "params_path")
CANDIDATES = path_option("--candidates", "data/interim/ingest/candidates.csv", "Candidates table (from ingest).")
OBJECTS = path_option("--objects", "data/interim/ingest/objects", "Object store of the candidates' images.")
MODEL = path_option("--model", "models/filter.pt", "The image-type network.")
DECISIONS = path_option("--decisions", "data/interim/filter/decisions.csv", "The filter's decisions.")
STANDARDISED_INDEX = path_option("--standardised", "data/interim/standardised/index.csv",
                                 "Index of the standardised images.")
STANDARDISED_IMAGES = path_option("--standardised", "data/interim/standardised/images",
                                  "Folder of the standardised images.")
METADATA = path_option("--metadata", "data/interim/metadata/metadata.csv", "The HAM10000 metadata table.",
                       "metadata_csv")
IMAGES = path_option("--images", "data/interim/metadata/images.csv", "Image ID to file table (from metadata).")


def friendly_errors(command):
    """Bad input exits non-zero with one clear line instead of a traceback."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except PipelineError as error:
            raise click.ClickException(str(error)) from None
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
            # every stage writes its outputs by temporary file and rename, and its stores are checked by hash on
            # the next run: nothing half-written is taken for done
            where = f" writing {error.filename}" if error.filename else ""
            raise click.ClickException(f"no space left on the device{where}: free some space and run it again "
                                       f"(nothing half-written is kept)") from None
    return wrapper


def section(params_path: Path, name: str) -> dict:
    """The stage's params section, the whole file validated first (the same one-line message as `ham validate`,
    exit 1)."""
    from .params import load_section

    return load_section(params_path, name)


def compute_of(params_path: Path):
    """Params `compute` (optional section: absent means the local executor and local stores), validated first.
    An `s3_endpoint` there is also exported as AWS_ENDPOINT_URL, so the stage's own worker processes see it."""
    import os

    from .executors import Compute
    from .params import check_params

    check_params(params_path)
    compute = Compute.of(load_params(params_path).get("compute"))
    if compute.s3_endpoint:
        os.environ["AWS_ENDPOINT_URL"] = compute.s3_endpoint
    return compute


@click.group()
@click.version_option(package_name="ham10000-repo")
def main():
    """Build, validate and release the HAM10000 dataset repository (see README.md and docs/)."""


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
@path_option("--out", "data/interim/ingest", "Folder of the candidates, rejects and provenance tables.")
@friendly_errors
def ingest(params_path, out):
    """Read every raw source in params `ingest.sources` into one candidates table plus a rejects ledger."""
    from .dvcfile import untracked_sources
    from .ingest import Limits, ingest as run

    from .params import load_section
    from .source_rules import ingest_rules

    params = load_section(params_path, "ingest", ingest_rules)
    for path in untracked_sources({"ingest": params}, params_path.parent):
        click.echo(f"warning: raw source {path} is not tracked by a .dvc file of its own; run `dvc add {path}` "
                   f"so it is versioned and can be pushed and pulled", err=True)
    result = run(params["sources"], params_path.parent, out, Limits.of(params), compute_of(params_path))
    click.echo(f"ingest: {len(result.candidates)} candidates, {len(result.rejects)} rejected "
               f"({result.units_read} raw files read, {result.units_cached} unchanged since the last run; "
               f"{result.decoded} images decoded) -> {out}")


@main.command("collect-annotated")
@PARAMS_OPTION
@CANDIDATES
@OBJECTS
@path_option("--out", "data/interim/annotated", "Folder of the annotated images and their index.")
@friendly_errors
def collect_annotated(params_path, candidates, objects, out):
    """Gather the annotated candidates' images (hard links) and labels in their own folder: all training reads."""
    from .annotations import collect_annotated as run

    params = section(params_path, "filter")
    counts = run(candidates, objects, Path(params["annotations"]), out)
    click.echo(f"collect-annotated: {counts['collected']} annotated images ({counts['waiting']} annotations wait "
               f"for their images) -> {out}")


@main.command("train-filter")
@PARAMS_OPTION
@path_option("--annotated", "data/interim/annotated", "Folder written by `ham collect-annotated`.")
@MODEL
@path_option("--metrics", "metrics/filter.json", "Held-out accuracy, per-class precision and recall.")
@path_option("--confusion", "metrics/filter_confusion.csv", "Held-out confusion rows for `dvc plots`.")
@friendly_errors
def train_filter(params_path, annotated, model, metrics, confusion):
    """Train the image-type network (dsc / macro / clinic) on the annotated images."""
    from .train_filter import train_filter as run

    result = run(annotated, section(params_path, "filter"), model, metrics, confusion)
    click.echo(f"train-filter: {result['trained_on']} images, held-out accuracy {result['holdout_accuracy']} "
               f"on {result['held_out']} -> {model}")


@main.command("filter")
@PARAMS_OPTION
@CANDIDATES
@OBJECTS
@MODEL
@path_option("--out", "data/interim/filter", "Folder of the decisions and the review queue.")
@friendly_errors
def filter_(params_path, candidates, objects, model, out):
    """Decide every candidate's image type (annotation, then a source's declared type, else the model); keep
    dermatoscopic images and write the review queue."""
    from .filter import decide

    params = section(params_path, "filter")
    counts = {}
    decisions = decide(candidates, objects, Path(params["annotations"]), model, params, out / "decisions.csv",
                       out / "review_queue.csv", counts=counts, compute=compute_of(params_path))
    kept = sum(d["keep"] == "true" for d in decisions)
    review = sum(d["review"] == "true" for d in decisions)
    click.echo(f"filter: {kept} of {len(decisions)} kept, {review} queued for review ({counts.get('scored', 0)} "
               f"scored on {counts.get('device', '-')}, {counts.get('cached', 0)} from the prediction cache) -> {out}")


@main.command()
@PARAMS_OPTION
@click.option("--queue", type=click.Path(path_type=Path), default="data/interim/filter/review_queue.csv",
              show_default=True, help="Review queue to annotate (ignored with --folder).")
@click.option("--objects", type=click.Path(path_type=Path), default="data/interim/ingest/objects", show_default=True)
@click.option("--folder", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Annotate every image of this folder instead of the review queue.")
@click.option("--annotations", type=click.Path(path_type=Path), default=None,
              help="CSV the answers are appended to (default: params filter.annotations).")
@click.option("--port", default=8765, show_default=True, help="Port on 127.0.0.1 (0: any free port).")
@friendly_errors
def annotate(params_path, queue, objects, folder, annotations, port):
    """Serve the annotation page on 127.0.0.1: keys or buttons d / c / m answer, s skips, u undoes, z or a click
    shows the image at full size; the model's guess shows only after the answer or on request. Every answer is
    written at once as IMAGE,ANNOTATION,TIMESTAMP, so work resumes where it stopped."""
    from .annotate import serve

    if annotations is None:
        annotations = Path(load_params(params_path, "filter")["annotations"])
    serve(annotations, queue=None if folder else queue, objects=objects, folder=folder, port=port)


@main.command("import-labels")
@PARAMS_OPTION
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--type", "key", type=click.Choice(["d", "c", "m", "dsc", "macro", "clinic"]), default=None,
              help="The type of every image under PATHS: d(sc), c(linic) overview, m(acro) close-up.")
@click.option("--manifest", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="A CSV naming each image (relative to the CSV's folder) and its type, instead of PATHS.")
@click.option("--file-column", default="file", show_default=True, help="The manifest's file column.")
@click.option("--type-column", default="image_type", show_default=True,
              help="The manifest's type column: d / c / m, dsc / macro / clinic, or ISIC's image_type values.")
@click.option("--annotations", type=click.Path(path_type=Path), default=None,
              help="The annotations CSV (default: params filter.annotations).")
@friendly_errors
def import_labels(params_path, paths, key, manifest, file_column, type_column, annotations):
    """Label images you already know the type of, in one go: every image file under PATHS (folders or files) as
    --type, or each image a --manifest lists. The labels join the annotations by the images' content, so
    `dvc repro` trains on them once their images are among the candidates (a source with `role: training` keeps
    such material out of the release)."""
    from .annotations import annotation_key, images_under, import_labels as run, labels_from_manifest

    if bool(manifest) == bool(paths):
        raise click.UsageError("give PATHS with --type, or --manifest")
    if paths and key is None:
        raise click.UsageError("--type is needed with PATHS")
    labelled = (labels_from_manifest(manifest, file_column, type_column) if manifest else
                [(path, annotation_key(key)) for folder in paths for path in images_under(folder)])
    if annotations is None:
        annotations = Path(load_params(params_path, "filter")["annotations"])
    counts = run(annotations, labelled)
    click.echo(f"import-labels: {counts['added']} labels added, {counts['relabelled']} changed, "
               f"{counts['unchanged']} already so -> {annotations}")


@main.command()
@PARAMS_OPTION
@CANDIDATES
@DECISIONS
@OBJECTS
@path_option("--out", "data/interim/standardised", "Folder of the standardised images and their index.")
@friendly_errors
def standardise(params_path, candidates, decisions, objects, out):
    """Turn every kept image into a 600x450 JPEG by the authors' mogrify recipe (only images not done before),
    then group near-duplicates across sources (duplicates.csv) and list borderline pairs (duplicate_review.csv)."""
    from .dedupe import dedupe
    from .standardise import standardise as run

    params = section(params_path, "standardise")
    compute = compute_of(params_path)
    counts = run(candidates, decisions, objects, params, out / "images", out / "index.csv", compute)
    near = dedupe(out / "index.csv", compute.store("standardised", out / "images"), candidates,
                  params=params.get("dedupe"), duplicates_csv=out / "duplicates.csv",
                  review_csv=out / "duplicate_review.csv", workers=params.get("workers"),
                  cache_json=out / "phash_cache.json", compute=compute)
    click.echo(f"standardise: {counts['kept']} images ({counts['processed']} processed, {counts['reused']} reused, "
               f"{counts['duplicates']} identical duplicates, {near['near_duplicates']} near-duplicates in "
               f"{near['groups']} groups, {near['review_pairs']} pairs to review) -> {out}")


@main.command()
@PARAMS_OPTION
@CANDIDATES
@DECISIONS
@STANDARDISED_INDEX
@path_option("--registry", "registry", "Folder of the ID registries (images.csv, lesions.csv).")
@path_option("--out", "data/interim/metadata", "Folder of the metadata, images and excluded tables.")
@friendly_errors
def metadata(params_path, candidates, decisions, standardised, registry, out):
    """Unify diagnoses, normalise and validate the metadata, give stable image and lesion IDs."""
    from .metadata import build_metadata

    params = section(params_path, "metadata")
    counts = build_metadata(candidates, decisions, standardised, params, registry, out,
                            Path(params["rules"]) if params.get("rules") else None)
    click.echo(f"metadata: {counts['rows']} rows, {counts['excluded']} excluded (see {out}/excluded.csv), "
               f"{counts['new_image_ids']} new image IDs, {counts['new_lesion_ids']} new lesion IDs")
    if "isic_deeper" in counts:
        click.echo(f"isic: {counts['isic_deeper']} of {counts['rows']} rows reach a node below their class's")
    for source, figures in counts["unify_coverage"].items():  # how well the diagnosis rules cover each source
        classes = ", ".join(f"{k} {v}" for k, v in figures.items() if v and k != "total")
        click.echo(f"unify coverage {source}: {figures['total']} reports: {classes}")


@main.command()
@PARAMS_OPTION
@METADATA
@IMAGES
@path_option("--registry", "registry/splits.csv", "The split registry.")
@friendly_errors
def split(params_path, metadata_csv, images, registry):
    """Assign every new lesion to train / val / test (lesion-disjoint; assigned lesions never move)."""
    from .split import assign_splits

    counts = assign_splits(metadata_csv, images, section(params_path, "split"), registry)
    click.echo(f"split: {counts['new_lesions']} new lesions assigned; images per split {counts['images']}")


@main.command()
@PARAMS_OPTION
@METADATA
@IMAGES
@path_option("--splits", "registry/splits.csv", "The split registry.")
@STANDARDISED_IMAGES
@path_option("--out", "release", "The release folder.")
@path_option("--summary", "metrics/release.json", "Counts per split and class.", "summary_json")
@path_option("--filter-metrics", "metrics/filter.json", "The image-type filter's training record (named in the "
             "release; left out where the file is absent).", "filter_metrics")
@friendly_errors
def release(params_path, metadata_csv, images, splits, standardised, out, summary_json, filter_metrics):
    """Write the release folder: images and metadata per split, attribution, manifest with every file's sha256."""
    from .common import read_csv
    from .release import build_release, filter_model_card, format_summary
    from .stores import materialise

    compute = compute_of(params_path)
    if compute.standardised_store:  # the release's images, fetched from the bucket into the local images folder
        wanted = [row["file"] for row in read_csv(images, ("file",))]
        standardised = materialise(compute.standardised_store, wanted, standardised, compute.options)
    all_params = load_params(params_path)
    model = (filter_model_card(json.loads(Path(filter_metrics).read_text()), all_params.get("filter") or {})
             if Path(filter_metrics).exists() else None)
    summary = build_release(metadata_csv, images, splits, standardised, section(params_path, "release"), out,
                            summary_json, all_params=all_params, filter_model=model)
    click.echo(format_summary(summary))


@main.command()
@click.argument("summary_json", type=click.Path(path_type=Path), default="metrics/release.json")
@friendly_errors
def summary(summary_json):
    """Print a release's counts per split and class, from its summary file (metrics/release.json), its
    release.json, a release folder, or one split folder (as `dvc get REPO release/test` gives it)."""
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
        click.echo(f"tagged {result['tag']} at {result['commit'][:10]}; now `ham publish` and `git push --follow-tags`")
    else:
        click.echo(f"all checks pass: `ham tag` would tag {result['tag']} at {result['commit'][:10]}")


@main.command("add")
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@friendly_errors
def add_command(sources):
    """Check each raw source folder (data/raw/<source>) for links leading out of it, then `dvc add` them: a symbolic
    link whose target is outside the source, or a hard link to a file outside it, is named and nothing is added
    (dvc add would cache and push the outside file). Run it again to add new files to a source."""
    from .add_source import add_sources

    sys.exit(add_sources(list(sources)))


@main.command("repair")
@click.option("--check-only", is_flag=True, help="Name the damage, change nothing.")
@friendly_errors
def repair_command(check_only):
    """Find every ingest object, standardised image, release file and DVC cache object whose bytes no longer match
    their name or record; remove every name of each (one inode can be the store, release/ and DVC's cache) and
    make them again (dvc pull of a raw source, dvc repro --force of the store's stage, dvc repro). Exit 1 naming
    what is still damaged. `make repro` runs it first; it also repairs what a killed dvc leaves half-written."""
    from .repair import repair

    report = repair(Path("."), remake=not check_only)
    for line in [*map(str, report.found), *report.done, *report.left]:
        click.echo(line)
    if report.left or (check_only and report.found):
        sys.exit(1)
    if not report.found:
        click.echo("repair: every store file, release file and DVC cache object matches its record")


@main.command()
@click.option("-r", "--remote", default=None, help="The DVC remote (default: the repository's default remote).")
@click.option("--rev", "revs", multiple=True, help="A git revision or tag to publish instead of the workspace "
                                                  "(repeat for several).")
@click.option("--all-tags", is_flag=True, help="Publish every tag's outputs instead of the workspace's.")
@click.option("--check-only", is_flag=True, help="Push nothing: only check what the remote holds.")
@click.option("--size-only", is_flag=True, help="Compare sizes, not content (a folder remote's objects unread).")
@click.option("-j", "--jobs", type=int, default=None, help="Parallel transfers (dvc push -j).")
@click.option("--repo", type=click.Path(path_type=Path, file_okay=False), default=".", show_default=True,
              help="The git + DVC repository.")
@friendly_errors
def publish(remote, revs, all_tags, check_only, size_only, jobs, repo):
    """`dvc push`, then check the remote holds every object of the pushed revisions (each output's file and
    directory objects, content checked where the remote allows); exit 1 naming each one missing or damaged. Run it
    again after an interrupted one: it forgets the state a killed `dvc push` leaves and completes the remote."""
    from .publish import publish as run

    report = run(repo, remote, revs, all_tags, content=not size_only, push=not check_only, jobs=jobs)
    for line in report.lines():
        click.echo(line)
    if not report.ok:
        sys.exit(1)


@main.command("validate")
@click.argument("paths", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="table: aligned text for people; json: a list of problems (file, row, field, value, message).")
@friendly_errors
def validate_command(paths: tuple[Path, ...], fmt: str) -> None:
    """Check metadata, manifest, candidates and decisions CSVs, the registries and params.yaml against the JSON
    Schemas in schemas/ and the rules across rows (unique IDs, a lesion's images agreeing, lesion-disjoint splits, ...).

    Prints every problem with its file, row, field and value and exits 1 if there is any; otherwise prints how
    many files are valid and exits 0. Rows count from 1 after the header (0 is the header itself); in params
    files the row is the line of the key.
    """
    from dataclasses import asdict

    from .schema_messages import format_table
    from .validate import validate_path

    problems = []
    for path in paths:
        problems += validate_path(path)
    if fmt == "json":
        click.echo(json.dumps([asdict(p) for p in problems], indent=2, ensure_ascii=False))
    elif problems:
        click.echo(format_table(problems))
        bad_files = len({p.file for p in problems})
        click.echo(f"{len(problems)} problem{'s' * (len(problems) != 1)} in {bad_files} of {len(paths)} "
                   f"file{'s' * (len(paths) != 1)}")
    else:
        click.echo(f"{len(paths)} file{'s' * (len(paths) != 1)} valid")
    if problems:
        click.get_current_context().exit(1)


@main.command("unify")
@click.argument("csvfile", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--rules", "rules_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Ordered rules file (YAML). Default: the packaged pipeline/rules/diagnoses.yaml.")
@click.option("--column", default="diagnosis", show_default=True, help="Column holding the free-text report.")
@click.option("--sep", type=click.Choice(["auto", ",", ";", "tab"]), default="auto", show_default=True,
              help="CSV delimiter; auto picks ';' or ',' from the header line.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a CSV with columns text,dx,rule,isic.")
@friendly_errors
def unify_command(csvfile, rules_path, column, sep, output):
    """Map free-text pathology reports in CSVFILE to diagnosis classes and ISIC diagnoses.

    Applies the ordered regular-expression rules (first match wins) to each row's text and prints
    text -> class (rule) and, indented below, the ISIC hierarchy's node; then coverage per class, how many
    reports reach a node deeper than their class's, and the texts that rules of two classes both match.
    Texts no rule matches are excluded and counted as unmatched.
    """
    from .unify import report

    for line in report(csvfile, rules_path, column, sep, output):
        click.echo(line)


if __name__ == "__main__":
    sys.exit(main())
