"""The paths the README and docs point at exist in the repository, so a link a reader follows
and a ``recipes/…`` path a user types reach the file, not the bundled fallback of the same name."""

import re
from pathlib import Path

import pytest

from reasonrl.config import bundled_recipes

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target), skipping web addresses and in-page anchors
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _links() -> list[tuple[Path, str]]:
    return [
        (doc, target)
        for doc in DOCS
        for target in LINK.findall(doc.read_text())
        if not re.match(r"[a-z]+://", target)
    ]


@pytest.mark.parametrize(("doc", "target"), _links(), ids=lambda v: getattr(v, "name", v))
def test_every_relative_link_reaches_a_file(doc: Path, target: str):
    assert (doc.parent / target).exists(), f"{doc.name} links to {target}, which does not exist"


def test_every_recipe_path_in_the_readme_is_a_file_of_the_repository():
    paths = set(re.findall(r"\brecipes/[\w.-]+\.yaml", (ROOT / "README.md").read_text()))
    assert "recipes/quickstart.yaml" in paths
    for path in paths:
        assert (ROOT / path).is_file(), path


def test_the_repository_recipes_are_the_bundled_ones():
    shipped = bundled_recipes()
    assert set(shipped) == {p.stem for p in (ROOT / "recipes").glob("*.yaml")}
    for name, path in shipped.items():
        assert path.read_text() == (ROOT / "recipes" / f"{name}.yaml").read_text()
