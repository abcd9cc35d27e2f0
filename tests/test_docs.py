"""The documentation: the configuration reference is what scripts/config_reference.py writes from the pydantic
models, every key has a description, and the site builds with warnings as errors (a broken link fails)."""

import importlib.util
import shutil
import subprocess
import sys

from pydantic import Field

from cluster.config_loader import Section
from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)


def test_the_committed_reference_is_the_generated_one():
    """Catches a config key added, renamed or re-defaulted without regenerating docs/config-reference.md."""
    assert (ROOT / "docs" / "config-reference.md").read_text() == ref.render(), (
        "docs/config-reference.md is out of date: run python scripts/config_reference.py"
    )


def test_every_key_has_a_type_a_default_and_a_description():
    """Catches a new key without a comment or description (its row would have an empty description)."""
    rows = ref.rows(ref.Config, "")
    assert len(rows) > 150
    bare = [key for key, annotation, default, description in rows if not (annotation and default and description)]
    assert bare == []


def test_the_generator_reads_descriptions_comments_and_nested_sections():
    """The reading itself: a field's description wins, else its comment (on its line or just above), and a nested
    section's keys are listed under its dotted prefix (catches a generator that drops a kind of field)."""

    class Inner(Section):
        depth: int = 3  # how deep

    class Outer(Section):
        # the name of it,
        # over two lines
        name: str = "x"
        rate: float = Field(0.5, description="from the description")
        inner: Inner = Inner()

    got = {key: (annotation, default, description) for key, annotation, default, description in ref.rows(Outer, "o.")}
    assert got == {
        "o.name": ("str", '`"x"`', "the name of it, over two lines"),
        "o.rate": ("float", "`0.5`", "from the description"),
        "o.inner.depth": ("int", "`3`", "how deep"),
    }


def test_the_site_builds_strict_and_a_broken_link_fails(tmp_path):
    """mkdocs --strict on the real pages passes, and on a copy with one broken link fails (catches a config that
    lets broken links through as warnings only)."""
    mkdocs = [sys.executable, "-m", "mkdocs", "build", "--strict"]  # not --quiet: it hides warnings from --strict
    env = {"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"}
    ok = subprocess.run([*mkdocs, "-d", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    with open(copy / "docs" / "index.md", "a") as f:
        f.write("\nSee [the missing page](no-such-page.md).\n")
    bad = subprocess.run([*mkdocs, "-d", str(tmp_path / "site2")], cwd=copy, capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "no-such-page.md" in bad.stderr, bad.stderr
