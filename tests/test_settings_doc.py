"""docs/configuration.md is what the generator prints from Settings; every setting has a
topic and an example; every link in the README and docs/ resolves; the README leads."""
import re
import subprocess

from tests.support import PYTHON, ROOT
from worker import settings_doc
from worker.config import Settings

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def test_the_configuration_page_is_what_the_generator_prints():
    printed = subprocess.run([PYTHON, "-m", "worker.settings_doc"], capture_output=True,
                             text=True, check=True).stdout
    assert (ROOT / "docs" / "configuration.md").read_text() == printed, \
        "docs/configuration.md is stale: python -m worker.settings_doc > docs/configuration.md"


def test_every_setting_has_one_topic_and_an_example():
    placed = [name for _, _, names in settings_doc.TOPICS for name in names]
    assert sorted(placed) == sorted(Settings.__dataclass_fields__)      # each exactly once
    assert set(settings_doc.EXAMPLES) == set(Settings.__dataclass_fields__)
    page = (ROOT / "docs" / "configuration.md").read_text()
    for field in Settings.__dataclass_fields__.values():
        for name in field.metadata["env"] or (field.metadata["flag"],):
            assert f"`{name}`" in page, name


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(path):
    seen, out, fenced = {}, set(), False
    for line in path.read_text().splitlines():
        fenced ^= bool(FENCE.match(line))
        if fenced or not line.startswith("#"):
            continue
        name = slug(line.lstrip("#"))
        count = seen.get(name, 0)
        seen[name] = count + 1
        out.add(name if count == 0 else f"{name}-{count}")
    return out


def test_every_link_in_the_readme_and_docs_resolves():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        fenced = False
        for number, line in enumerate(page.read_text().splitlines(), 1):
            fenced ^= bool(FENCE.match(line))
            if fenced:
                continue
            for target in LINK.findall(line):
                if re.match(r"[a-z]+:", target):      # http(s), mailto: not ours to check
                    continue
                path, _, anchor = target.partition("#")
                dest = (page.parent / path).resolve() if path else page
                if not dest.exists():
                    broken.append(f"{page.name}:{number}: {target} (no such file)")
                elif anchor and dest.suffix == ".md" and anchor not in headings(dest):
                    broken.append(f"{page.name}:{number}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_readme_is_short_and_links_to_the_rest():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 350
    for doc in ("docs/configuration.md", "docs/running.md", "docs/gpu.md", "docs/docker.md",
                "docs/fleet.md", "docs/benchmarks.md", "docs/compatibility.md"):
        assert f"]({doc}" in readme, doc
