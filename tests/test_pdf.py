"""data.pdf: reading a PDF page by page and cleaning its text, on PDFs written on the fly (gemma_helpers.offline)."""
from __future__ import annotations

import pytest

from gemma_helpers import offline
from gemma_helpers.data import pdf


def test_hyphenation_ligatures_headers_and_references_are_cleaned(tmp_path):
    sections = [*offline.EXAMPLE_SECTIONS] + [(f"{i} Findings", " ".join(["Reef classification uses satellite temperature fields."] * 20))
                           for i in range(3, 6)]
    path = tmp_path / "p.pdf"
    offline.write_pdf(path, "Marine Heat and Coral Reefs", sections, running_header="Journal of Examples",
                references=["Doe, J. (2020). Warm water. Reef Letters 1, 1-2."])
    parsed = pdf.read_pdf(path)
    raw = "\n".join(parsed.pages)
    assert len(parsed.pages) >= 2 and raw.count("Journal of Examples") == len(parsed.pages)
    assert "-\n" in raw and ("\ufb01" in raw or "\ufb02" in raw)  # hyphenated line ends and ligatures really there
    text = pdf.clean_pages(parsed.pages)
    for section, body in sections:
        assert f"{section}\n{body}" in text  # words joined across line ends, ligatures undone
    assert "Journal of Examples" not in text  # the running header
    assert "Reef Letters" not in text and "References" not in text  # the reference section
    assert not any(line.strip().isdigit() for line in text.splitlines())  # page numbers


def test_a_broken_page_is_reported_and_the_rest_is_kept(tmp_path):
    long = [(f"{i} Section", " ".join(["Warm water makes corals expel their algae."] * 60)) for i in range(1, 5)]
    path = tmp_path / "broken.pdf"
    offline.write_pdf(path, "Marine Heat and Coral Reefs", long, broken_pages=[2])
    parsed = pdf.read_pdf(path)
    assert len(parsed.pages) >= 3
    assert len(parsed.problems) == 1 and parsed.problems[0].startswith("page 2:")
    assert parsed.pages[1] == "" and parsed.pages[0].strip() and parsed.pages[2].strip()


def test_encrypted_image_only_and_non_pdf_files_raise_a_named_error(tmp_path):
    cases = {"locked.pdf": offline.example_pdf(password="secret"), "scan.pdf": offline.example_pdf(image_only=True),
             "page.pdf": b"<html>not found</html>"}
    reasons = {"locked.pdf": "encrypted", "scan.pdf": "no text layer", "page.pdf": "not a readable PDF"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(pdf.PDFError) as err:
            pdf.read_pdf(tmp_path / name)
        assert name in str(err.value) and reasons[name] in err.value.reason
