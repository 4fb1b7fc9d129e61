"""bench.doc_tables: the one helper that rewrites a marked block of a doc."""
from __future__ import annotations

import pytest

from bench.doc_tables import command_line, write_block


def test_the_block_between_the_markers_is_replaced_and_the_rest_kept(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("# Title\n<!-- t:begin -->\nold\n<!-- t:end -->\ntail\n<!-- u:begin -->\nother\n<!-- u:end -->\n")
    write_block(doc, "t", "| a |\n|---|\n")
    assert doc.read_text() == "# Title\n<!-- t:begin -->\n| a |\n|---|\n<!-- t:end -->\ntail\n<!-- u:begin -->\nother\n<!-- u:end -->\n"


def test_missing_markers_stop_the_tool_or_append_the_block(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("# Results\n")
    with pytest.raises(SystemExit, match="has no <!-- t:begin -->"):
        write_block(doc, "t", "x")
    assert doc.read_text() == "# Results\n"
    write_block(doc, "t", "x", append=True)
    assert doc.read_text() == "# Results\n\n<!-- t:begin -->\nx\n<!-- t:end -->\n"


def test_the_command_quoted_with_a_table_is_the_module_form():
    assert command_line("latency", ["--runs", "30"]) == "python -m bench.latency --runs 30"
