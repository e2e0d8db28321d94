"""Every configuration example the README and docs/*.md show is one reasonrl accepts: the
``key=value`` overrides of each ``reasonrl`` command (also those in the recipes' comments), the
settings written in inline code (``algo.name=rloo``, ``task.chat_template: auto|on|off``: each
alternative), and every YAML snippet, validated against the config schema as a user would type
them. An example that shows an error must fail with the error it shows."""

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from reasonrl.config import ConfigError, RunConfig, load_config, load_yaml, validate_config
from reasonrl.pipeline import is_pipeline, load_pipeline

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)
SPAN = re.compile(r"`([^`\n]+(?:\n[^`\n]+)?)`")  # inline code may wrap onto a second line
KEY = r"[a-z_][a-z0-9_]*(?:\.[a-z0-9_-]+)*"
OVERRIDE = re.compile(rf"^({KEY})=(.*)$", re.S)
SETTING = re.compile(rf"^({KEY})(?:=|:\s+)(.+)$", re.S)  # key=v or key: v, v may be a|b|c
PLACEHOLDER = re.compile(r"^(?:[A-Z]+|[α-ω])$")  # seed=S, model.pack_tokens: N, rm.likelihood: β
FIELDS = set(RunConfig.model_fields)
DEFAULT_RECIPE = {"quickstart": "quickstart", "rm": "tiny-rm", "dpo": "tiny-dpo"}


@dataclass(frozen=True)
class Example:
    where: str
    recipe: str | None  # None: the defaults
    overrides: tuple[str, ...] = ()
    snippet: str | None = None  # a YAML recipe or fragment
    error: tuple[str, ...] = ()  # lines of the error the docs show for it

    def __str__(self) -> str:
        if self.snippet is not None:
            return f"{self.where}: yaml {self.snippet.splitlines()[0]} …"
        return f"{self.where}: {self.recipe or ''} {' '.join(self.overrides)}"


def _command(text: str, where: str, error: tuple[str, ...] = ()) -> Example | None:
    """The recipe and overrides of a ``reasonrl run|quickstart|rm|dpo`` command line."""
    if "reasonrl" not in text:
        return None
    try:
        words = shlex.split(text.replace("\\\n", " "), comments=True)
    except ValueError:  # prose with an apostrophe, not a command
        return None
    if "reasonrl" not in words:
        return None
    args = words[words.index("reasonrl") + 1 :]
    if not args or args[0] not in ("run", *DEFAULT_RECIPE):
        return None  # eval, report, classic, sandbox: no recipe overrides shown
    positional = []
    for before, word in zip(args, args[1:], strict=False):
        usage = any(c in word for c in "[]…")  # [KEY=VALUE …] [--out DIR]: the usage line
        if not (word.startswith("-") or before == "--out" or usage or OVERRIDE.match(word)):
            positional.append(word)
    recipe = positional[0] if args[0] != "quickstart" and positional else None
    recipe = recipe or DEFAULT_RECIPE.get(args[0])
    if recipe is None or PLACEHOLDER.match(recipe):
        return None
    overrides = [w for w in args if OVERRIDE.match(w)]
    if any(PLACEHOLDER.match(OVERRIDE.match(o)[2]) for o in overrides):
        return None
    if args[0] in ("rm", "dpo"):
        overrides.append(f"stage={args[0]}")
    return Example(where, recipe, tuple(overrides), error=error)


def _from_markdown(doc: Path) -> list[Example]:
    text = doc.read_text()
    found: list[Example] = []
    for lang, body in FENCE.findall(text):
        if lang == "yaml":
            found.append(Example(doc.name, None, snippet=body))
            continue
        lines = re.split(r"(?<!\\)\n", body)
        for i, line in enumerate(lines):
            shown = [x.strip() for x in lines[i + 1 :] if x.startswith(("error:", " "))]
            error = tuple(shown) if lines[i + 1 : i + 2] and "error:" in lines[i + 1] else ()
            if (ex := _command(line.lstrip("$ "), doc.name, error)) is not None:
                found.append(ex)
    for span in SPAN.findall(FENCE.sub("", text)):
        if "reasonrl " in span:
            if (ex := _command(span, doc.name)) is not None:
                found.append(ex)
        elif all(OVERRIDE.match(w) for w in span.split()) and len(span.split()) > 1:
            found.append(Example(doc.name, None, tuple(span.split())))
        elif (m := SETTING.match(span)) and m[1].split(".")[0] in FIELDS:
            for value in re.split(r"\s*\|\s*", m[2].strip()):
                if not PLACEHOLDER.match(value):
                    found.append(Example(doc.name, None, (f"{m[1]}={value}",)))
    return found


def _from_recipe_comments(recipe: Path) -> list[Example]:
    lines = recipe.read_text().splitlines()
    comments = [line.lstrip("# ") for line in lines if line.startswith("#")]
    return [ex for line in comments if (ex := _command(line, recipe.name)) is not None]


def _examples() -> list[Example]:
    """Each example once, where it is first shown."""
    found = [ex for doc in DOCS for ex in _from_markdown(doc)]
    found += [ex for recipe in RECIPES for ex in _from_recipe_comments(recipe)]
    first: dict[tuple, Example] = {}
    for ex in found:
        first.setdefault((ex.recipe, ex.overrides, ex.snippet), ex)
    return list(first.values())


EXAMPLES = _examples()


def _validate(ex: Example, tmp_path: Path) -> None:
    if ex.snippet is not None:
        data = load_yaml(ex.snippet)
        if "stages" in data:
            recipe = tmp_path / "snippet.yaml"
            recipe.write_text(ex.snippet)
            load_pipeline(recipe, [], tmp_path / "run")
        else:
            validate_config(data, ex.where)
        return
    recipe = ex.recipe
    if recipe is not None and (ROOT / recipe).is_file():
        recipe = str(ROOT / recipe)  # recipes/quickstart.yaml, as typed in the repository
    if recipe is not None and is_pipeline(recipe):
        load_pipeline(recipe, list(ex.overrides), tmp_path / "run")
    else:
        load_config(recipe, list(ex.overrides))


@pytest.mark.parametrize("ex", EXAMPLES, ids=str)
def test_every_documented_example_validates(ex: Example, tmp_path: Path):
    if not ex.error:
        _validate(ex, tmp_path)
        return
    with pytest.raises(ConfigError) as e:
        _validate(ex, tmp_path)
    for line in ex.error[1:]:  # the first line names the recipe's path on the writer's machine
        assert line in str(e.value)


def test_the_examples_found_cover_the_documented_kinds():
    """Guards the extraction: a regex that stops matching would leave the test above empty."""
    overrides = {o for ex in EXAMPLES for o in ex.overrides}
    assert {"task.chat_template=on", "task.chat_template=off", "rl.learning_rate=5e-5"} <= overrides
    assert "general.rl.steps=20" in overrides  # a stage addressed by name
    assert "algo.log_ratio_clamp=null" in overrides  # docs/algorithms.md
    assert "eval.before=false" in overrides  # docs/fast-engine.md, a command over two lines
    assert sum(ex.snippet is not None for ex in EXAMPLES) >= 5
    assert sum(bool(ex.error) for ex in EXAMPLES) == 1
