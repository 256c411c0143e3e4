"""`forager view`: a local web viewer over $FORAGER_HOME.

Pages are rendered on the server (Jinja2 templates, SVG plots drawn in Python) from a SQLite index of
the store that is refreshed from file stats, so a request reads at most the one file it shows.
Modules: sources (tolerant JSONL reading), rows (records -> index rows), index (the SQLite index and
its incremental refresh), queries (what the pages ask the index), plots (SVG), render (diffs, trace
steps, formatting), auth (the token rules), app (routes), cli (the `view` verb). Design: docs/viewer.md.
"""
