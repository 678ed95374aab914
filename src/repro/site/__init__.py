"""The site: the toc, the paper pages, the dashboard and chapter tables, generated from the catalogue and
the committed results, then rendered by Jupyter Book (``repro book``)."""
