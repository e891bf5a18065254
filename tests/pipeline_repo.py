"""Helpers for end-to-end tests: a throw-away copy of this repository in which `dvc repro` really runs."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def run(command: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("GIT_AUTHOR_NAME", "test")
    env.setdefault("GIT_AUTHOR_EMAIL", "test@example.org")
    env.setdefault("GIT_COMMITTER_NAME", "test")
    env.setdefault("GIT_COMMITTER_EMAIL", "test@example.org")
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def copy_repository(target: Path) -> Path:
    """Copy the working tree's tracked and not-ignored files into `target` and commit them in a new git repo."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO_ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    run(["git", "init", "-q"], target)
    run(["git", "add", "-A"], target)
    run(["git", "commit", "-q", "-m", "copy"], target)
    return target


def clone_repository(target: Path) -> Path:
    """A `git clone` of this repository's committed HEAD (what CI and a new user get), not the working tree: a
    result that depends on an uncommitted file, or a committed file that is not reproduced, shows here."""
    run(["git", "clone", "-q", "--no-hardlinks", str(REPO_ROOT), str(target)], REPO_ROOT.parent)
    return target


def workflow_step(name: str) -> str:
    """The shell command of the step called `name` in the GitHub workflow (.github/workflows/ci.yml), so that a test
    runs exactly what CI runs."""
    import yaml

    workflow = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / "ci.yml").read_text(encoding="utf-8"))
    [step] = [step for job in workflow["jobs"].values() for step in job["steps"] if step.get("name") == name]
    return step["run"]
