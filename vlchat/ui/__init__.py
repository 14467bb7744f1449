"""Everything Textual: the app (make_app), its widgets, stylesheet and messages."""
