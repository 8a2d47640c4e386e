"""Showing results: the text tables every command prints, the report's figures and its HTML page."""
