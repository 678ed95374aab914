"""The catalogue: 98 papers, validated on load, bad entries named."""

from __future__ import annotations

import pytest

from repro.catalog import CHAPTER_TITLES, CatalogError, UnknownPaper, load_catalog


def test_catalogue_has_98_valid_papers_in_known_chapters():
    cat = load_catalog()
    assert len(cat) == 98
    assert {p.chapter for p in cat} == set(CHAPTER_TITLES)
    assert all(p.tier in "ABCD" for p in cat)
    assert cat.get("ntk").module == "repro.infinite_width.ntk"
    assert cat.get("pfn").module == "repro.bayesian.pfn"


def test_unknown_slug_suggests_close_names():
    with pytest.raises(UnknownPaper, match="did you mean ntk"):
        load_catalog().get("ntkk")
    with pytest.raises(UnknownPaper, match="unknown chapter"):
        load_catalog().chapter("bayes")


def test_bibtex_entries_are_keyed_by_slug_and_carry_the_arxiv_id():
    p = load_catalog().get("ntk")
    entry = p.bibtex
    assert entry.startswith("@article{ntk,")
    assert "eprint = {1806.07572}" in entry and "Jacot" in entry


@pytest.mark.parametrize("field, value, message", [
    ("tier", "Z", "field 'tier'"),
    ("chapter", "magic", "field 'chapter'"),
    ("arxiv", 1806.07572, "field 'arxiv'"),
    ("year", "2018", "field 'year'"),
    ("authors", "A. Person", "field 'authors'"),
])
def test_a_bad_field_is_an_error_that_names_paper_and_field(tmp_path, field, value, message):
    import yaml

    entry = {"slug": "x-paper", "title": "X", "authors": ["A"], "year": 2020, "venue": "V", "arxiv": None,
             "chapter": "theory", "tier": "A", "abstract": "..."}
    entry[field] = value
    path = tmp_path / "papers.yaml"
    path.write_text(yaml.safe_dump({"papers": [entry]}))
    with pytest.raises(CatalogError, match=message) as err:
        load_catalog(path)
    assert "x-paper" in str(err.value)


def test_missing_field_and_duplicate_slug_are_errors(tmp_path):
    import yaml

    entry = {"slug": "x", "title": "X", "authors": [], "year": 2020, "venue": "V", "arxiv": None,
             "chapter": "theory", "tier": "A", "abstract": "..."}
    path = tmp_path / "papers.yaml"
    path.write_text(yaml.safe_dump({"papers": [entry, entry]}))
    with pytest.raises(CatalogError, match="listed twice"):
        load_catalog(path)
    del entry["venue"]
    path.write_text(yaml.safe_dump({"papers": [entry]}))
    with pytest.raises(CatalogError, match="missing field 'venue'"):
        load_catalog(path)
