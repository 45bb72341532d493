"""``buildgraph report``: one self-contained HTML page (or Markdown, or JSON) describing a
recipe's recorded build. Imported only by that command."""
