"""The package as released: one version everywhere (metadata, `--version`, CHANGELOG.md, CITATION.cff), the
metadata the ecosystem reads (SPDX license, valid classifiers), and the tests testing the install they run against.
"""

from __future__ import annotations

import importlib.metadata
import re
from datetime import date
from pathlib import Path

import yaml
from trove_classifiers import classifiers as KNOWN_CLASSIFIERS

import nnunet_dca
from conftest import run

ROOT = Path(__file__).resolve().parents[1]
# Keep a Changelog's release heading: ## [1.2.3] - 2026-12-06
RELEASE_HEADING = re.compile(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})$", re.MULTILINE)
# CFF 1.2.0: the keys the schema requires, at the top and in each reference
CFF_REQUIRED = {"cff-version", "message", "title", "authors"}
CFF_REFERENCE_REQUIRED = {"type", "title", "authors"}
DCA_PAPER_DOI = "10.1016/j.engappai.2023.107139"
NNUNET_PAPER_DOI = "10.1038/s41592-020-01008-z"


def metadata() -> importlib.metadata.PackageMetadata:
    return importlib.metadata.metadata("nnunet-dca")


def releases() -> list[tuple[str, str]]:
    """(version, date) of each release heading of CHANGELOG.md, in the order written."""
    return RELEASE_HEADING.findall((ROOT / "CHANGELOG.md").read_text())


def as_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def test_the_version_is_the_installed_metadata_and_pyprojects():
    pyproject = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert nnunet_dca.__version__ == metadata()["Version"] == pyproject.group(1), \
        "pyproject.toml's version changed since the install: pip install the package again"


def test_version_prints_the_versions_a_bug_report_needs():
    first, second = run(["nnunet-dca", "--version"]).strip().splitlines()
    assert first == f"nnunet-dca {nnunet_dca.__version__}"
    for distribution in ("nnunetv2", "dynamic-network-architectures", "torch"):
        assert f"{distribution} {importlib.metadata.version(distribution)}" in second, second
    assert re.search(r"Python \d+\.\d+\.\d+$", second), second


def test_the_changelog_leads_with_this_version_and_goes_back_in_order():
    found = releases()
    assert found and found[0][0] == nnunet_dca.__version__, \
        f"CHANGELOG.md's newest release is {found[:1]}, the package is {nnunet_dca.__version__}"
    versions = [as_tuple(version) for version, _ in found]
    dates = [date.fromisoformat(day) for _, day in found]
    assert versions == sorted(versions, reverse=True) and len(set(versions)) == len(versions), versions
    assert dates == sorted(dates, reverse=True), dates


def test_citation_cff_has_the_required_keys_this_version_and_both_papers():
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert CFF_REQUIRED <= set(citation), CFF_REQUIRED - set(citation)
    assert citation["cff-version"] == "1.2.0"
    assert citation["version"] == nnunet_dca.__version__
    newest_release_date = releases()[0][1]
    assert citation["date-released"] == newest_release_date  # quoted in the file: a string, as CFF wants
    assert citation["license"] == metadata()["License-Expression"]
    assert all(set(author) & {"name", "family-names"} for author in citation["authors"]), citation["authors"]
    for reference in citation["references"]:
        assert CFF_REFERENCE_REQUIRED <= set(reference), reference
    assert {reference["doi"] for reference in citation["references"]} == {DCA_PAPER_DOI, NNUNET_PAPER_DOI}


def test_the_readme_cites_both_papers():
    readme = (ROOT / "README.md").read_text()
    assert f"doi     = {{{DCA_PAPER_DOI}}}" in readme and f"doi     = {{{NNUNET_PAPER_DOI}}}" in readme


def test_the_license_is_an_spdx_expression_shipped_with_its_text():
    assert metadata()["License-Expression"] == "Apache-2.0"
    assert metadata().get("License") is None  # the deprecated free-text field is gone
    assert metadata().get_all("License-File") == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text()


def test_classifiers_are_known_to_pypi():
    classifiers = metadata().get_all("Classifier")
    assert classifiers and set(classifiers) <= KNOWN_CLASSIFIERS, set(classifiers) - KNOWN_CLASSIFIERS
    # PEP 639: a license expression replaces the license classifiers
    assert not [classifier for classifier in classifiers if classifier.startswith("License ::")]


def test_the_tests_import_the_installed_package():
    """A wheel install is what the tests test: a source tree on sys.path must not shadow it."""
    distribution = importlib.metadata.distribution("nnunet-dca")
    installed_init = [file for file in distribution.files or [] if str(file) == "nnunet_dca/__init__.py"]
    imported = Path(nnunet_dca.__file__).resolve()
    if installed_init:
        assert imported == Path(distribution.locate_file(installed_init[0])).resolve()
    else:  # an editable install (pip install -e): its source is this tree
        assert imported.is_relative_to(ROOT), f"nnunet_dca is imported from {imported}, not from {ROOT}"
